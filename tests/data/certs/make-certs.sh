#!/bin/sh
# Regenerate the test PKI used by the unit and integration tests:
#   ca.crt / ca.key          test CA (CN=tollgate test CA)
#   server.crt / server.key  server certificate for localhost, 127.0.0.1 and ::1
#   client.crt / client.key  client certificate, CN=test-client (mTLS tests)
# EC P-256 keys, valid for 10 years.  These keys are public test fixtures:
# never use them for anything else.
set -eu
cd "$(dirname "$0")"
DAYS=3650
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

newkey ca.key
openssl req -new -x509 -sha256 -days "$DAYS" -key ca.key -out ca.crt \
    -subj "/O=tollgate tests/CN=tollgate test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"

sign() { # name subject extensions-file
    newkey "$1.key"
    openssl req -new -sha256 -key "$1.key" -subj "$2" -out "$tmp/$1.csr"
    openssl x509 -req -sha256 -days "$DAYS" -in "$tmp/$1.csr" -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -extfile "$3" -out "$1.crt"
}

cat > "$tmp/server.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EXT
sign server "/O=tollgate tests/CN=localhost" "$tmp/server.ext"

cat > "$tmp/client.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EXT
sign client "/O=tollgate tests/CN=test-client" "$tmp/client.ext"

chmod 644 ./*.crt ./*.key
openssl verify -CAfile ca.crt server.crt client.crt
