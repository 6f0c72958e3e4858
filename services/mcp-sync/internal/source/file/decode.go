package file

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	mcpv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/mcp/v1"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/convert"
)

// objects are the supported objects of one manifest file, in document order.
type objects struct {
	pods            []*mcpv1.Pod
	serviceAccounts []*mcpv1.ServiceAccount
	namespaces      []*mcpv1.Namespace
	keySecrets      []*mcpv1.KeySecret
	tlsPolicies     []*mcpv1.TLSPolicy
	scopeConfigs    []*mcpv1.ScopeConfig
}

// decodeFile reads every document of one manifest file. JSON files hold one document; YAML files
// may hold several separated by "---". Documents are numbered from 1 in errors, and "kind: List"
// items from 1 after that. Any error rejects the whole file, so that a file is applied entirely
// or not at all.
func decodeFile(path string, data []byte, logger *slog.Logger) (objects, error) {
	var docs [][]byte
	if strings.HasSuffix(path, ".json") {
		docs = [][]byte{data}
	} else {
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return objects{}, fmt.Errorf("%s: splitting yaml documents: %w", path, err)
			}
			docs = append(docs, doc)
		}
	}
	var out objects
	for i, doc := range docs {
		where := fmt.Sprintf("%s: document %d", path, i+1)
		if err := out.decodeDocument(where, doc, logger); err != nil {
			return objects{}, err
		}
	}
	return out, nil
}

// decodeDocument reads the type first and then decodes the document strictly as that type, so
// that a typo in a field name is an error instead of a silently missing value.
func (o *objects) decodeDocument(where string, doc []byte, logger *slog.Logger) error {
	asJSON, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if t := bytes.TrimSpace(asJSON); len(t) == 0 || string(t) == "null" {
		return nil // empty document or only comments
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(asJSON, &tm); err != nil {
		return fmt.Errorf("%s: reading apiVersion and kind: %w", where, err)
	}
	if tm.Kind == "" {
		return fmt.Errorf("%s: no kind", where)
	}
	if tm.APIVersion == convert.Group+"/"+convert.Version {
		return o.decodeCustom(where, tm.Kind, asJSON)
	}
	if strings.Contains(tm.APIVersion, "/") {
		logger.Debug("skipping manifest of another api group", "where", where, "api_version", tm.APIVersion, "kind", tm.Kind)
		return nil
	}
	if tm.APIVersion != "v1" {
		return fmt.Errorf("%s: %s: apiVersion %q is not a core api version (want v1)", where, tm.Kind, tm.APIVersion)
	}
	switch tm.Kind {
	case "Pod":
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(doc, &pod); err != nil {
			return fmt.Errorf("%s: decoding Pod: %w", where, err)
		}
		p, err := convert.Pod(&pod)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		o.pods = append(o.pods, p)
	case "ServiceAccount":
		var sa corev1.ServiceAccount
		if err := yaml.UnmarshalStrict(doc, &sa); err != nil {
			return fmt.Errorf("%s: decoding ServiceAccount: %w", where, err)
		}
		s, err := convert.ServiceAccount(&sa)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		o.serviceAccounts = append(o.serviceAccounts, s)
	case "Namespace":
		var ns corev1.Namespace
		if err := yaml.UnmarshalStrict(doc, &ns); err != nil {
			return fmt.Errorf("%s: decoding Namespace: %w", where, err)
		}
		n, err := convert.Namespace(&ns)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		o.namespaces = append(o.namespaces, n)
	case "List":
		var list corev1.List
		if err := yaml.UnmarshalStrict(doc, &list); err != nil {
			return fmt.Errorf("%s: decoding List: %w", where, err)
		}
		for i, item := range list.Items {
			if err := o.decodeDocument(fmt.Sprintf("%s: item %d", where, i+1), item.Raw, logger); err != nil {
				return err
			}
		}
	default:
		logger.Debug("skipping manifest of an unserved kind", "where", where, "kind", tm.Kind)
	}
	return nil
}

// decodeCustom reads a Portcullis custom resource with the same checks the kube source applies.
func (o *objects) decodeCustom(where, kind string, asJSON []byte) error {
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(asJSON); err != nil {
		return fmt.Errorf("%s: decoding %s: %w", where, kind, err)
	}
	var err error
	switch kind {
	case "KeySecret":
		var ks *mcpv1.KeySecret
		if ks, err = convert.KeySecret(&u); err == nil {
			o.keySecrets = append(o.keySecrets, ks)
		}
	case "TLSPolicy":
		var p *mcpv1.TLSPolicy
		if p, err = convert.TLSPolicy(&u); err == nil {
			o.tlsPolicies = append(o.tlsPolicies, p)
		}
	case "ScopeConfig":
		var sc *mcpv1.ScopeConfig
		if sc, err = convert.ScopeConfig(&u); err == nil {
			o.scopeConfigs = append(o.scopeConfigs, sc)
		}
	default:
		return fmt.Errorf("%s: unknown kind %s in %s/%s", where, kind, convert.Group, convert.Version)
	}
	if err != nil {
		return fmt.Errorf("%s: %s %s: %w", where, kind, u.GetName(), err)
	}
	return nil
}
