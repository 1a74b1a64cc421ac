#!/usr/bin/python3
"""
make-fixtures.py - regenerate the fixed JWT key set and tokens used by
tests/unit/test_jwt.c (PyJWT interop check) and fuzz/fuzz_jwt.c.

Uses Debian 12's python3-jwt 2.6.0 and python3-cryptography 38, i.e. an
implementation independent of filters/jwt.c.  Fresh keys every run; the
private keys are not kept.  Run from anywhere:

    /usr/bin/python3 tests/data/jwt/make-fixtures.py

Writes:
    tests/data/jwt/fuzz-jwks.json   public keys (rsa1, ec256, ec384, ed1) and the oct key hs1
    tests/data/jwt/fuzz-tokens.txt  one valid token per line, exp 2100-01-01
    fuzz/corpus/jwt/valid-<alg>     the same tokens, one per file (fuzz seeds)
    fuzz/corpus/jwt/bad-*           a few near misses (none, key confusion, jku)
    fuzz/corpus/jwt/struct-*        seeds for fuzz_jwt's structured mode ("HEADER\nPAYLOAD")
"""
import base64
import hashlib
import hmac
import json
import os

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "fuzz", "corpus", "jwt"))

ISSUER = "https://fuzz.example"
CLAIMS = {
    "iss": ISSUER,
    "sub": "fuzz-user",
    "aud": "tollgate",
    "tenant": "acme",
    "tier": "standard",
    "iat": 1700000000,
    "nbf": 1700000000,
    "exp": 4102444800,  # 2100-01-01T00:00:00Z
}


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec256 = ec.generate_private_key(ec.SECP256R1())
ec384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
secret = os.urandom(32)

rn = rsa_key.public_key().public_numbers()
p256 = ec256.public_key().public_numbers()
p384 = ec384.public_key().public_numbers()
edx = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

jwks = {"keys": [
    {"kty": "RSA", "kid": "rsa1", "use": "sig", "n": uint(rn.n), "e": uint(rn.e)},
    {"kty": "EC", "kid": "ec256", "alg": "ES256", "crv": "P-256",
     "x": uint(p256.x, 32), "y": uint(p256.y, 32)},
    {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": uint(p384.x, 48), "y": uint(p384.y, 48)},
    {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": b64(edx)},
    {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64(secret)},
]}

signers = [
    ("RS256", rsa_key, "rsa1"), ("RS384", rsa_key, "rsa1"), ("RS512", rsa_key, "rsa1"),
    ("PS256", rsa_key, "rsa1"), ("ES256", ec256, "ec256"), ("ES384", ec384, "ec384"),
    ("EdDSA", ed, "ed1"), ("HS256", secret, "hs1"),
]
tokens = []
for alg, key, kid in signers:
    tokens.append((alg, jwt.encode(CLAIMS, key, algorithm=alg, headers={"kid": kid})))

# Each token must round-trip through PyJWT before it becomes a fixture.
pubs = {"rsa1": rsa_key.public_key(), "ec256": ec256.public_key(),
        "ec384": ec384.public_key(), "ed1": ed.public_key(), "hs1": secret}
for alg, tok in tokens:
    kid = jwt.get_unverified_header(tok)["kid"]
    jwt.decode(tok, pubs[kid], algorithms=[alg], audience="tollgate", issuer=ISSUER)

# Near misses for the corpus (they must never verify).
rs256 = tokens[0][1]
_, payload, sig = rs256.split(".")
none_tok = b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + "."
pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
si = b64(b'{"alg":"HS256","kid":"rsa1"}') + "." + payload
confusion = si + "." + b64(hmac.new(pem, si.encode(), hashlib.sha256).digest())
jku = b64(b'{"alg":"RS256","jku":"http://127.0.0.1:9/j","kid":"rsa1"}') + "." + payload + "." + sig

with open(os.path.join(HERE, "fuzz-jwks.json"), "w") as f:
    json.dump(jwks, f, indent=2)
    f.write("\n")
with open(os.path.join(HERE, "fuzz-tokens.txt"), "w") as f:
    for _, tok in tokens:
        f.write(tok + "\n")
os.makedirs(CORPUS, exist_ok=True)
for name in os.listdir(CORPUS):
    os.unlink(os.path.join(CORPUS, name))
for alg, tok in tokens:
    with open(os.path.join(CORPUS, "valid-" + alg), "w") as f:
        f.write(tok)
for name, tok in [("bad-none", none_tok), ("bad-confusion", confusion), ("bad-jku", jku)]:
    with open(os.path.join(CORPUS, name), "w") as f:
        f.write(tok)
structured = {
    "struct-ok": ({"alg": "HS256", "kid": "hs1"}, dict(CLAIMS, exp=1750000300)),
    "struct-nokid": ({"alg": "HS256", "typ": "at+jwt"}, dict(CLAIMS, aud=["x", "tollgate"])),
    "struct-fuzz2": ({"alg": "HS256"}, {"iss": "https://fuzz2.example", "email": "e", "exp": 1}),
    "struct-crit": ({"alg": "HS256", "crit": ["exp"]}, CLAIMS),
}
for name, (h, p) in structured.items():
    with open(os.path.join(CORPUS, name), "w") as f:
        f.write(json.dumps(h, separators=(",", ":")) + "\n" + json.dumps(p, separators=(",", ":")))
print("wrote", len(tokens), "tokens")
