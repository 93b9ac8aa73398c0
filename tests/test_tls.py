"""TLS on the data port and to https:// pods, with certificates made by trustme.

Chains: curl or an ``ssl`` client -> katyusha (TLS) -> the Starlette app; and
-> katyusha (TLS) -> nonna (TLS, an https:// pod trusted through
``upstream-ca``) -> the app on uvicorn over TLS (nonna's ``upstream-ca``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import subprocess
import sys

import pytest
import trustme

from tests.procs import Proc, script
from tests.raw_http import send_raw


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": tmp / "ca.pem", "cert": tmp / "cert.pem", "key": tmp / "key.pem",
             "other_key": tmp / "other-key.pem", "rogue_cert": tmp / "rogue.pem",
             "rogue_key": tmp / "rogue-key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(files["cert"], append=index > 0)
    cert.private_key_pem.write_to_path(files["key"])
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(files["other_key"])
    rogue = trustme.CA().issue_cert("127.0.0.1")
    rogue.cert_chain_pems[0].write_to_path(files["rogue_cert"])
    rogue.private_key_pem.write_to_path(files["rogue_key"])
    return {name: str(path) for name, path in files.items()}


def tls_args(pki) -> list[str]:
    return ["--tls-cert", pki["cert"], "--tls-key", pki["key"]]


@pytest.fixture(scope="module")
def tls_app(pki):
    proc = Proc([sys.executable, "-m", "tests.edge_servers", "--ssl-certfile", pki["cert"],
                 "--ssl-keyfile", pki["key"]], ready_timeout=30)
    yield proc
    proc.terminate()


@pytest.fixture(scope="module", params=["katyusha", "katyusha+nonna"])
def front(request, pki, app, tls_app):
    procs = []
    try:
        if request.param == "katyusha":
            pod = f"{app.url},name=pod"
        else:
            nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream",
                          tls_app.url, "--upstream-ca", pki["ca"], *tls_args(pki)], ready_timeout=30)
            procs.append(nonna)
            assert nonna.url.startswith("https://")
            pod = f"{nonna.url},name=pod"
        procs.append(Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                           "--pod", pod, "--upstream-ca", pki["ca"], *tls_args(pki)],
                          ready_timeout=30))
        yield procs[-1]
    finally:
        for proc in reversed(procs):
            proc.terminate()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def https_get(url: str, path: str, cafile: str) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(*host_port(url), context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_curl_and_an_ssl_client_are_served_over_tls(front, pki):
    assert front.url.startswith("https://")
    done = subprocess.run(["curl", "-sS", "--cacert", pki["ca"], front.url + "/hello"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello"
    status, body = https_get(front.url, "/headers", pki["ca"])
    assert status == 200
    # The app learns the client came over TLS.
    assert json.loads(body)["x-forwarded-proto"] == "https"


def test_plain_http_on_the_tls_port_gets_a_400_saying_so_and_tls_goes_on(front, pki):
    reply = send_raw(front.url, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert reply.endswith(b"this port speaks HTTPS (TLS): use an https:// URL")
    done = subprocess.run(["curl", "-sS", "http://" + front.url.split("://", 1)[1] + "/hello"],
                          capture_output=True, text=True, timeout=20)
    assert "use an https:// URL" in done.stdout
    assert https_get(front.url, "/hello", pki["ca"]) == (200, b"hello")


def test_twenty_megabytes_over_tls_arrive_byte_exact(front, pki):
    size = 20 << 20
    context = ssl.create_default_context(cafile=pki["ca"])
    conn = http.client.HTTPSConnection(*host_port(front.url), context=context, timeout=30)
    conn.request("GET", f"/bytes?n={size}")
    response = conn.getresponse()
    expected = hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).hexdigest()
    digest = hashlib.sha256()
    got = 0
    while block := response.read(1 << 20):
        digest.update(block)
        got += len(block)
    conn.close()
    assert (response.status, got, digest.hexdigest()) == (200, size, expected)


def test_untrusted_pod_certificate_is_a_502_unless_verification_is_off(pki, tls_app):
    argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
            "--pod", f"{tls_app.url},name=pod", "--retries", "0"]
    with Proc(argv, ready_timeout=30) as proxy:  # the system CAs do not know trustme's CA
        conn = http.client.HTTPConnection(*host_port(proxy.url), timeout=10)
        conn.request("GET", "/hello")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 502
        assert b"TLS handshake failed" in body and b"CERTIFICATE_VERIFY_FAILED" in body
    with Proc(argv + ["--upstream-tls-verify", "false"], ready_timeout=30) as proxy:
        conn = http.client.HTTPConnection(*host_port(proxy.url), timeout=10)
        conn.request("GET", "/hello")
        assert conn.getresponse().read() == b"hello"


@pytest.mark.parametrize("case,named", [
    ("missing", "tls-cert"), ("mismatched", "tls-key"), ("alone", "tls-key"), ("bad-ca", "upstream-ca"),
])
def test_bad_tls_files_stop_katyusha_and_nonna_naming_the_setting(pki, tmp_path, case, named):
    missing = str(tmp_path / "nope.pem")
    args = {
        "missing": ["--tls-cert", missing, "--tls-key", pki["key"]],
        "mismatched": ["--tls-cert", pki["cert"], "--tls-key", pki["other_key"]],
        "alone": ["--tls-cert", pki["cert"]],
        "bad-ca": ["--upstream-ca", pki["key"]],
    }[case]
    for argv in ([script("katyusha"), "serve", "--port", "0", "--admin-port", "0"],
                 [script("nonna"), "--port", "0", "--admin-port", "0"]):
        done = subprocess.run(argv + args, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        assert named in done.stderr, done.stderr
