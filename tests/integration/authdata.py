"""Helpers for the authentication tests: signing keys and a JWKS built with
python3-cryptography, JWS tokens (valid ones through python3-jwt, hostile
ones assembled by hand), API keys and keys-file entries, and a small curl
wrapper that returns status, protocol version, headers and body."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from conftest import CERTS, SLOW

ISSUER = "https://idp.tollgate.test"
AUDIENCE = "tollgate"
PEPPER = "pepper-for-the-tests-0123456789"  # >= 16 bytes


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _int_bytes(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return n.to_bytes(size, "big")


def pub_jwk(pub, kid=None):
    """The public JWK of a cryptography public key."""
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        d = {"kty": "RSA", "n": b64u(_int_bytes(nums.n)), "e": b64u(_int_bytes(nums.e))}
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        d = {"kty": "EC", "crv": "P-256", "x": b64u(_int_bytes(nums.x, 32)),
             "y": b64u(_int_bytes(nums.y, 32))}
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        d = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    else:
        raise TypeError(pub)
    if kid:
        d["kid"] = kid
    return d


class Material:
    """One set of signing keys (generated once per test module)."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.hs = os.urandom(32)
        self.attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_pub_pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        # kid -> (PyJWT algorithm, private key)
        self.by_kid = {"rsa1": ("RS256", self.rsa), "ec1": ("ES256", self.ec),
                       "ed1": ("EdDSA", self.ed), "hs1": ("HS256", self.hs)}

    def jwks(self):
        """Public parts only; "oct" for the HS256 secret."""
        keys = [dict(pub_jwk(self.rsa.public_key(), "rsa1"), use="sig"),
                pub_jwk(self.ec.public_key(), "ec1"),
                pub_jwk(self.ed.public_key(), "ed1"),
                {"kty": "oct", "kid": "hs1", "k": b64u(self.hs)}]
        return {"keys": keys}

    def write_jwks(self, path):
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(self, kid="rsa1", claims=None, headers=None, drop=(), alg=None, key=None,
              **over):
        """A properly signed token for the key kid, with valid claims unless told."""
        a, k = self.by_kid.get(kid, ("RS256", self.rsa))
        c = claims if claims is not None else valid_claims(**over)
        for name in drop:
            c.pop(name, None)
        h = {"kid": kid}
        h.update(headers or {})
        return jwt.encode(c, key if key is not None else k, algorithm=alg or a, headers=h)


def valid_claims(**over):
    now = int(time.time())
    c = {"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now,
         "nbf": now - 5, "tenant": "tenant-jwt"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def signing_input(header, payload):
    enc = lambda o: b64u(o if isinstance(o, bytes) else json.dumps(o).encode())
    return enc(header) + "." + enc(payload)


def raw_token(header, payload, alg=None, key=None, sig=None):
    """header.payload.signature built by hand (sig given, or made with PyJWT's
    algorithm objects, which do not look at the header)."""
    si = signing_input(header, payload)
    if sig is None:
        algo = get_default_algorithms()[alg]
        sig = algo.sign(si.encode(), algo.prepare_key(key))
    return si + "." + b64u(sig)


def hs256_raw(header, payload, secret):
    si = signing_input(header, payload)
    return si + "." + b64u(hmac.new(secret, si.encode(), hashlib.sha256).digest())


def flip_char(s, i):
    c = s[i]
    return s[:i] + ("A" if c != "A" else "B") + s[i + 1:]


# ---- API keys ----

def new_api_key():
    """The format tollgate generates: "tg_" + base64url of 32 random bytes."""
    return "tg_" + b64u(os.urandom(32))


def sha256_hash(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def hmac_hash(key, pepper=PEPPER):
    return "hmac-sha256:" + hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_entry(kid, key, principal, policy="standard", tenant="acme", hmac_pepper=None,
              not_after="2099-01-01T00:00:00Z", disabled=False):
    e = {"id": kid, "hash": hmac_hash(key, hmac_pepper) if hmac_pepper else sha256_hash(key),
         "principal": principal, "policy": policy, "not_after": not_after,
         "disabled": disabled}
    if tenant is not None:
        e["tenant"] = tenant
    return e


def write_keys(path, entries):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"keys": entries}, indent=1))
    os.replace(tmp, path)  # atomic: a reload never sees half a file
    return path


# ---- HTTP through curl ----

PROTOS = {
    "h1": (["--http1.1"], "plain", "http"),
    "h2c": (["--http2-prior-knowledge"], "plain", "http"),
    "h2tls": (["--http2", "-k"], "tls", "https"),
}
PROTO_VERSION = {"h1": "HTTP/1.1", "h2c": "HTTP/2", "h2tls": "HTTP/2"}


class Resp:
    def __init__(self, rc, status, version, headers, body, stderr):
        self.rc = rc
        self.status = status
        self.version = version
        self.headers = headers  # [(lowercase name, value)]
        self.body = body
        self.stderr = stderr

    def header(self, name):
        vals = [v for k, v in self.headers if k == name]
        return vals[-1] if vals else None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return (f"<Resp rc={self.rc} {self.version} {self.status} {self.headers} "
                f"{self.body[:400]!r} {self.stderr[-300:]!r}>")


def curl_raw(url, *args, headers=(), data=None, timeout=10):
    cmd = ["curl", "-sS", "--max-time", str(timeout * SLOW), "-D", "-", "-o", "-"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    cmd += [*args, url]
    r = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout * SLOW + 5)
    out = r.stdout
    status, version, hdrs = None, None, []
    while out.startswith(b"HTTP/"):
        head, sep, out = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ")[0], int(lines[0].split(" ")[1])
        hdrs = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs.append((k.strip().lower(), v.strip()))
        if status >= 200:
            break
    return Resp(r.returncode, status, version, hdrs, out, r.stderr.decode(errors="replace"))


class Client:
    """curl against one tollgate listener over one protocol."""

    def __init__(self, t, proto="h1"):
        self.t = t
        self.proto = proto
        self.flags, self.listener, self.scheme = PROTOS[proto]

    def url(self, path):
        return self.t.url(path, self.listener, self.scheme)

    def get(self, path, headers=(), extra=()):
        r = curl_raw(self.url(path), *self.flags, *extra, headers=headers)
        assert r.rc == 0, r
        assert r.version == PROTO_VERSION[self.proto], r
        return r

    def post(self, path, body, headers=(), extra=()):
        hs = [("content-type", "application/json"), *headers]
        r = curl_raw(self.url(path), *self.flags, *extra, headers=hs, data=body)
        assert r.rc == 0, r
        assert r.version == PROTO_VERSION[self.proto], r
        return r


def bearer(tok):
    return [("authorization", f"Bearer {tok}")]


def mtls_args(cert=True):
    a = ["--cacert", str(CERTS / "ca.crt")]
    if cert:
        a += ["--cert", str(CERTS / "client.crt"), "--key", str(CERTS / "client.key")]
    return a
