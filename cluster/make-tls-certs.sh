#!/usr/bin/env bash
# Make a private CA and one certificate + key it signs, for TLS between dask clients, scheduler
# and workers (distributed checks that the peer's certificate was signed by the CA; a client
# without such a certificate is refused).
#
#   bash cluster/make-tls-certs.sh certs/ [HOSTNAME_OR_IP ...]
#
# writes certs/ca.pem (share with everyone), certs/ca-key.pem (keep offline), certs/dask.pem and
# certs/dask-key.pem (give to the scheduler, the workers and the clients that may connect).
# Needs only the openssl command line. Extra arguments are added to the certificate's names
# (default: localhost and 127.0.0.1).
set -euo pipefail
out=${1:?usage: make-tls-certs.sh OUT_DIR [HOST ...]}
shift || true
mkdir -p "$out"
cd "$out"
san="DNS:localhost,IP:127.0.0.1"
for h in "$@"; do
  if [[ $h =~ ^[0-9.]+$ ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
days=${DAYS:-365}
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days "$days" \
  -subj "/CN=dnmf-dask test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout dask-key.pem -out dask.csr -subj "/CN=dask" 2>/dev/null
printf "subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n" "$san" > ext.cnf
openssl x509 -req -in dask.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out dask.pem -days "$days" \
  -extfile ext.cnf 2>/dev/null
rm -f dask.csr ext.cnf ca.srl
chmod 600 ca-key.pem dask-key.pem
echo "wrote $(pwd)/{ca.pem,ca-key.pem,dask.pem,dask-key.pem}"
