package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Certs is a private CA with a server certificate for 127.0.0.1 and
// "localhost" and a client certificate, all written as PEM files to a
// temporary directory.
type Certs struct {
	CAFile                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	// OtherCAFile is a second, unrelated CA: a client that trusts only it
	// must reject the server.
	OtherCAFile string
}

// NewCerts generates a CA, a server and a client certificate in t's
// temporary directory.
func NewCerts(t testing.TB) *Certs {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := newCA(t, "ackd test CA")
	other, _ := newCA(t, "unrelated CA")
	c := &Certs{
		CAFile:      writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw),
		OtherCAFile: writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw),
	}
	c.ServerCert, c.ServerKey = newLeaf(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = newLeaf(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
	return c
}

// StartTLS starts a redis-server that also listens with TLS on a second
// free port, using certs; with clientAuth the server demands a client
// certificate signed by the CA (tls-auth-clients yes). It returns the
// server and the TLS address. The plain port stays open for the helper's
// own use.
func StartTLS(t testing.TB, certs *Certs, clientAuth bool, flags ...string) (*Server, string) {
	t.Helper()
	auth := "no"
	if clientAuth {
		auth = "yes"
	}
	var tlsPort string
	pick := func() ([]string, error) {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		tlsPort = strconv.Itoa(p)
		return []string{"--tls-port", tlsPort}, nil
	}
	base := []string{
		"--tls-cert-file", certs.ServerCert,
		"--tls-key-file", certs.ServerKey,
		"--tls-ca-cert-file", certs.CAFile,
		"--tls-auth-clients", auth,
	}
	s := start(t, "redistest.StartTLS", "", append(base, flags...), pick)
	return s, net.JoinHostPort("127.0.0.1", tlsPort)
}

func newCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	return sign(t, &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil, nil)
}

func newLeaf(t testing.TB, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	cert, key := sign(t, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}, ca, caKey)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return writePEM(t, dir, name+".pem", "CERTIFICATE", cert.Raw), writePEM(t, dir, name+"-key.pem", "PRIVATE KEY", kder)
}

// sign makes a fresh key and a certificate for it from tmpl, valid for a
// day, signed by parent (self-signed when parent is nil).
func sign(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return cert, key
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return path
}
