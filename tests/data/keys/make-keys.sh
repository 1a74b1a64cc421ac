#!/bin/sh
# Regenerates the valid keys-file fixtures of tests/unit/test_apikey.c from
# the plaintext test keys below, with the openssl command-line tool (so the
# hashes are computed independently of filters/apikey.c):
#   sha256:      printf %s KEY | openssl dgst -sha256
#   hmac-sha256: printf %s KEY | openssl dgst -sha256 -hmac PEPPER
# These keys are test data only.  Run from anywhere: sh make-keys.sh
set -eu
cd "$(dirname "$0")"

PEPPER='test-pepper-0123456789abcdef'
K256=$(printf 'k%.0s' $(seq 1 256))   # TG_APIKEY_MAX_LEN bytes: accepted
K257=$(printf 'k%.0s' $(seq 1 257))   # one more: refused before hashing

sha() { printf 'sha256:%s' "$(printf %s "$1" | openssl dgst -sha256 -r | cut -d' ' -f1)"; }
mac() { printf 'hmac-sha256:%s' "$(printf %s "$1" | openssl dgst -sha256 -hmac "$PEPPER" -r | cut -d' ' -f1)"; }

cat > valid.json <<JSON
{
  "keys": [
    {"id": "alpha", "hash": "$(sha tg_test_alpha)", "principal": "team-a", "tenant": "acme",
     "policy": "standard", "not_after": "2027-01-01T00:00:00Z"},
    {"id": "beta", "hash": "$(sha tg_test_beta)", "principal": "team-b", "policy": "standard"},
    {"id": "expired", "hash": "$(sha tg_test_expired)", "principal": "team-a",
     "policy": "standard", "not_after": "2020-06-30T12:00:00.250Z"},
    {"id": "disabled", "hash": "$(sha tg_test_disabled)", "principal": "team-a",
     "policy": "standard", "disabled": true},
    {"disabled": false, "tenant": null, "not_after": "2030-01-01T00:00:00+00:00",
     "policy": "standard", "principal": "team-c", "hash": "$(sha tg_test_offset)", "id": "offset"},
    {"id": "max-len", "hash": "$(sha "$K256")", "principal": "team-a", "policy": "standard"},
    {"id": "too-long", "hash": "$(sha "$K257")", "principal": "team-a", "policy": "standard"},
    {"id": "Unicode_1.x", "hash": "$(sha tg_test_unicode)", "principal": "équipe-ü ✓",
     "tenant": "tenant with spaces", "policy": "standard", "not_after": null, "disabled": null}
  ]
}
JSON

cat > valid-hmac.json <<JSON
{
  "keys": [
    {"id": "sha", "hash": "$(sha tg_test_sha)", "principal": "p-sha", "policy": "standard"},
    {"id": "mac", "hash": "$(mac tg_test_mac)", "principal": "p-mac", "policy": "standard"},
    {"id": "mac-expired", "hash": "$(mac tg_test_mac_expired)", "principal": "p-mac",
     "policy": "standard", "not_after": "2021-03-04T05:06:07Z"},
    {"id": "mac-disabled", "hash": "$(mac tg_test_mac_disabled)", "principal": "p-mac",
     "policy": "standard", "disabled": true},
    {"id": "both-sha", "hash": "$(sha tg_test_both)", "principal": "sha-side", "policy": "standard"},
    {"id": "both-mac", "hash": "$(mac tg_test_both)", "principal": "mac-side", "policy": "standard"}
  ]
}
JSON
