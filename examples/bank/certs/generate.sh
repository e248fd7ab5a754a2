#!/usr/bin/env bash
# Regenerates the demo CA and certificates (committed; valid for 10 years). Needs openssl.
# These are sample credentials for the example only: never use them for anything real.
set -euo pipefail
cd "$(dirname "$0")"
days=3650
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days $days -subj "/O=Tollgate Demo/CN=Tollgate Demo CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

issue() { # name subject extensions
  ec "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -sha256 -days $days \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/O=Tollgate Demo/CN=api.bank.test" \
  "subjectAltName=DNS:api.bank.test,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
issue ledger-reader "/O=Tollgate Demo/CN=ledger-reader" \
  "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
issue other-client "/O=Tollgate Demo/CN=other-client" \
  "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
rm -f ca.srl
