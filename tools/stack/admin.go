package stack

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/portcullis-mesh/portcullis/libs/servicetls"
	kmsv1 "github.com/portcullis-mesh/portcullis/proto/portcullis/kms/v1"
)

// AdminFiles issues the operator's certificate (spiffe://<td>/portcullis/admin), the credential
// of kms-adapter's admin API and of `portcullisctl`.
func (s *Stack) AdminFiles() (servicetls.Files, error) {
	id, err := servicetls.ServiceID(s.td, servicetls.Admin)
	if err != nil {
		return servicetls.Files{}, err
	}
	return s.ca.Issue(filepath.Join(s.opts.Dir, "certs"), servicetls.Admin, id, 24*time.Hour)
}

// Admin dials kms-adapter's admin API as the operator. Close the returned connection.
func (s *Stack) Admin() (kmsv1.KMSAdminServiceClient, *grpc.ClientConn, error) {
	files, err := s.AdminFiles()
	if err != nil {
		return nil, nil, err
	}
	return DialAdmin(s.Addr(KMSAdapter), files)
}

// DialAdmin dials kms-adapter's admin API at addr with the operator's certificate files.
func DialAdmin(addr string, files servicetls.Files) (kmsv1.KMSAdminServiceClient, *grpc.ClientConn, error) {
	id, err := servicetls.Load(files)
	if err != nil {
		return nil, nil, err
	}
	kmsID, err := spiffeid.FromSegments(id.TrustDomain(), "portcullis", servicetls.KMSAdapter)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(id.ClientCredentials(kmsID)))
	if err != nil {
		return nil, nil, fmt.Errorf("dialing kms-adapter at %s: %w", addr, err)
	}
	return kmsv1.NewKMSAdminServiceClient(conn), conn, nil
}
