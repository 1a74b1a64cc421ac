#!/usr/bin/python3
"""bench/auth_material.py OUTDIR [NTOKENS] - key material for bench/auth.sh.

Writes into OUTDIR (throwaway keys, generated fresh on every run):
  jwks.json                 public JWKS: rsa1 (RSA-2048), ec1 (P-256), ed1 (Ed25519)
  rsa1.pub.pem ec1.pub.pem ed1.pub.pem   the same public keys as PEM (OpenSSL floor)
  tokens-RS256.txt tokens-ES256.txt tokens-EdDSA.txt   NTOKENS distinct tokens each
                            (distinct jti), one per line, valid for 2 hours
  apikey.txt                one API key ("tg_" + 43 base64url chars, as tollgate makes)
  pepper.txt                a 32-character pepper
  keys-sha256.json          1000 entries, all "sha256:" (the bench key is one of them)
  keys-hmac.json            1000 entries, all "hmac-sha256:" under the pepper
Needs python3-jwt and python3-cryptography (Debian).
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://idp.bench.tollgate"
AUDIENCE = "tollgate"
NKEYS = 1000


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def ib(n, size=None):
    return n.to_bytes(size or (n.bit_length() + 7) // 8, "big")


def pub_jwk(pub, kid):
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "use": "sig", "n": b64u(ib(n.n)), "e": b64u(ib(n.e))}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        n = pub.public_numbers()
        return {"kty": "EC", "kid": kid, "crv": "P-256", "x": b64u(ib(n.x, 32)),
                "y": b64u(ib(n.y, 32))}
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64u(raw)}


def main():
    out = sys.argv[1]
    ntok = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    os.makedirs(out, exist_ok=True)
    keys = {"rsa1": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ec1": ("ES256", ec.generate_private_key(ec.SECP256R1())),
            "ed1": ("EdDSA", ed25519.Ed25519PrivateKey.generate())}
    jwks = {"keys": [pub_jwk(k.public_key(), kid) for kid, (_, k) in keys.items()]}
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    now = int(time.time())
    for kid, (alg, k) in keys.items():
        with open(os.path.join(out, kid + ".pub.pem"), "wb") as f:
            f.write(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
        with open(os.path.join(out, "tokens-%s.txt" % alg), "w") as f:
            for i in range(ntok):
                claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-%d" % (i % 97),
                          "tenant": "tenant-%d" % (i % 7), "iat": now, "nbf": now - 5,
                          "exp": now + 7200, "jti": "%s-%08d" % (kid, i)}
                f.write(jwt.encode(claims, k, algorithm=alg, headers={"kid": kid}) + "\n")

    key = "tg_" + b64u(os.urandom(32))
    pepper = b64u(os.urandom(24))  # 32 characters
    with open(os.path.join(out, "apikey.txt"), "w") as f:
        f.write(key + "\n")
    with open(os.path.join(out, "pepper.txt"), "w") as f:
        f.write(pepper + "\n")
    others = ["tg_" + b64u(os.urandom(32)) for _ in range(NKEYS - 1)]
    for name, h in (("keys-sha256.json", lambda k: "sha256:" + hashlib.sha256(k.encode()).hexdigest()),
                    ("keys-hmac.json", lambda k: "hmac-sha256:" + hmac.new(
                        pepper.encode(), k.encode(), hashlib.sha256).hexdigest())):
        entries = [{"id": "bench-%04d" % i, "hash": h(k), "principal": "team-%d" % (i % 50),
                    "tenant": "acme", "policy": "standard", "not_after": "2099-01-01T00:00:00Z"}
                   for i, k in enumerate([key] + others)]
        with open(os.path.join(out, name), "w") as f:
            json.dump({"keys": entries}, f)


if __name__ == "__main__":
    main()
