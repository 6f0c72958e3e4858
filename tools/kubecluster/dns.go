package kubecluster

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ClusterDomain is the cluster's DNS domain.
const ClusterDomain = "cluster.local"

// dnsTTL is short: tests create and delete Services all the time.
const dnsTTL = 5

// clusterDNS is the cluster's DNS server, in this process instead of a CoreDNS pod (there is no
// image of it): it answers the pods' queries for <service>.<namespace>.svc.cluster.local (a
// Service's ClusterIP, or a headless Service's ready endpoints) and
// <hostname>.<service>.<namespace>.svc.cluster.local (a StatefulSet pod's), from the API server.
// Every other name is NXDOMAIN: nothing is forwarded, nothing leaves the machine. It listens on
// the node's address, port 53, UDP and TCP; the kubelet names it as the pods' nameserver.
type clusterDNS struct {
	client kubernetes.Interface
	log    *slog.Logger
	udp    net.PacketConn
	tcp    net.Listener
	wg     sync.WaitGroup
}

func startDNS(client kubernetes.Interface, addr netip.Addr, log *slog.Logger) (*clusterDNS, error) {
	hostPort := netip.AddrPortFrom(addr, 53).String()
	udp, err := net.ListenPacket("udp", hostPort)
	if err != nil {
		return nil, err
	}
	tcp, err := net.Listen("tcp", hostPort)
	if err != nil {
		udp.Close()
		return nil, err
	}
	d := &clusterDNS{client: client, log: log, udp: udp, tcp: tcp}
	d.wg.Add(2)
	go d.serveUDP()
	go d.serveTCP()
	return d, nil
}

func (d *clusterDNS) close() {
	if d == nil {
		return
	}
	d.udp.Close()
	d.tcp.Close()
	d.wg.Wait()
}

func (d *clusterDNS) serveUDP() {
	defer d.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := d.udp.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		if resp, ok := d.answer(buf[:n], 512); ok {
			_, _ = d.udp.WriteTo(resp, from)
		}
	}
}

func (d *clusterDNS) serveTCP() {
	defer d.wg.Done()
	for {
		conn, err := d.tcp.Accept()
		if err != nil {
			return // closed
		}
		go func() {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			var size [2]byte
			for {
				if _, err := io.ReadFull(conn, size[:]); err != nil {
					return
				}
				req := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(conn, req); err != nil {
					return
				}
				resp, ok := d.answer(req, 65535)
				if !ok {
					return
				}
				if _, err := conn.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the response to one query; false drops a message that is not a query.
func (d *clusterDNS) answer(req []byte, maxSize int) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, found, err := d.lookup(ctx, q.Name.String())
	switch {
	case err != nil:
		d.log.Warn("cluster dns", "name", q.Name.String(), "err", err)
		resp.RCode = dnsmessage.RCodeServerFailure
	case !found:
		resp.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), resp)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil, false
	}
	if q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		for _, a := range addrs {
			rh := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: dnsTTL}
			if b.AResource(rh, dnsmessage.AResource{A: a.As4()}) != nil {
				return nil, false
			}
		}
	}
	out, err := b.Finish()
	if err != nil || len(out) > maxSize {
		return nil, false
	}
	return out, true
}

// lookup resolves a fully qualified name ("a.b.svc.cluster.local."). found is false for a name
// that does not exist (NXDOMAIN); a name that exists may have no IPv4 address.
func (d *clusterDNS) lookup(ctx context.Context, fqdn string) (addrs []netip.Addr, found bool, err error) {
	name, ok := strings.CutSuffix(strings.ToLower(fqdn), ".svc."+ClusterDomain+".")
	if !ok {
		return nil, false, nil
	}
	labels := strings.Split(name, ".")
	var host string
	switch len(labels) {
	case 2:
	case 3:
		host, labels = labels[0], labels[1:]
	default:
		return nil, false, nil
	}
	svcName, namespace := labels[0], labels[1]
	svc, err := d.client.CoreV1().Services(namespace).Get(ctx, svcName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsBadRequest(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if host == "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		if a, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil && a.Is4() {
			addrs = append(addrs, a)
		}
		return addrs, true, nil
	}
	if host != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		return nil, false, nil
	}
	slices, err := d.client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svcName})
	if err != nil {
		return nil, false, err
	}
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if host != "" && (ep.Hostname == nil || *ep.Hostname != host) {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
					addrs = append(addrs, ip)
				}
			}
		}
	}
	if host != "" && len(addrs) == 0 {
		return nil, false, nil
	}
	return addrs, true, nil
}
