#!/usr/bin/env bash
# Test certificates for the TLS tests: scripts/tls-certs.sh DIR
#   DIR/ca.pem, ca.key            a CA
#   DIR/server.pem, server.key    for localhost and 127.0.0.1, signed by the CA
#   DIR/client.pem, client.key    a client certificate, signed by the CA
#   DIR/wrong-ca.pem, wrong-ca.key  another CA, which signed none of the above
#   DIR/wrong-client.pem, .key    a client certificate signed by wrong-ca
# Idempotent: files already there are kept (delete DIR to make new ones).
# Keys are readable by all (0644) so a broker running as another user can
# read server.key; they protect nothing but tests.
set -euo pipefail
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
cd "$dir"
days=3650

ca() { # name subject
    [ -s "$1.pem" ] && [ -s "$1.key" ] && return
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" \
        -days "$days" -subj "$2" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

leaf() { # name subject extensions [signing CA]
    local signer=${4:-ca}
    [ -s "$1.pem" ] && [ -s "$1.key" ] && return
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$signer.pem" -CAkey "$signer.key" -CAcreateserial \
        -out "$1.pem" -days "$days" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

ca ca "/CN=tasker-messaging test CA"
ca wrong-ca "/CN=tasker-messaging wrong CA"
leaf server "/CN=localhost" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf client "/CN=tasker-messaging test client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
leaf wrong-client "/CN=tasker-messaging untrusted client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" wrong-ca
chmod 0644 ./*.pem ./*.key
openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
openssl verify -CAfile wrong-ca.pem wrong-client.pem >/dev/null
