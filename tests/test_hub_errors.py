"""The Hub pre-flight tells a gated repo, a token without access, a missing repo, a rejected token and an
unreachable Hub apart. The real huggingface_hub client talks to a stand-in Hub on loopback that answers
the way the Hub's API does (status codes and X-Error-Code headers); nothing leaves this machine."""


import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import huggingface_hub.constants
import huggingface_hub.utils._http
import pytest
from conftest import free_port

from flux_api.engine.sources import ModelSource, check_source
from flux_api.errors import HubAuthError, HubUnreachable, ModelSourceError


class StandInHub(BaseHTTPRequestHandler):
    """Answers HEAD/GET of /{owner}/{name}/resolve/{rev}/{file} like the Hub does for each case."""

    def _answer(self):
        repo = "/".join(self.path.strip("/").split("/")[:2])
        authed = "authorization" in {k.lower() for k in self.headers}
        if repo == "org/gated":
            code, headers = (403 if authed else 401), {"X-Error-Code": "GatedRepo",
                                                        "X-Error-Message": "Access to model org/gated is restricted."}
        elif repo == "org/badtoken":
            code, headers = 401, {"X-Error-Message": "Invalid credentials in Authorization header"}
        else:
            code, headers = 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()  # shutdown() in 10 ms, not 0.5 s
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def src(repo):
    return ModelSource("hub", repo, repo)


def test_gated_without_token_says_set_hf_token(hub):
    with pytest.raises(HubAuthError, match="gated model and no Hugging Face token is set.*HF_TOKEN"):
        check_source(src("org/gated"), None, endpoint=hub)


def test_gated_with_token_says_accept_the_licence(hub):
    with pytest.raises(HubAuthError, match="has no access to it: accept the licence at https://huggingface.co/org/gated"):
        check_source(src("org/gated"), "hf_stand_in_token", endpoint=hub)


def test_missing_repo_is_not_found(hub):
    with pytest.raises(ModelSourceError, match="was not found on the Hugging Face Hub") as e:
        check_source(src("org/missing"), None, endpoint=hub)
    assert not isinstance(e.value, (HubAuthError, HubUnreachable))


def test_rejected_token(hub):
    with pytest.raises(HubAuthError, match="rejected the token"):
        check_source(src("org/badtoken"), "hf_bad", endpoint=hub)


def test_unreachable_hub_is_its_own_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # A refused connection is retried 5 times with back-off waits of 1+2+4+8+8 s (huggingface_hub's
    # http_backoff): all the test's time. The client's clock is a stand-in that only records the waits;
    # every attempt still runs, and each is refused at once by the closed port.
    waits = []
    monkeypatch.setattr(huggingface_hub.utils._http, "time", SimpleNamespace(sleep=waits.append))
    port = free_port()  # nothing listens there
    with pytest.raises(HubUnreachable, match="could not be reached"):
        check_source(src("org/anything"), None, endpoint=f"http://127.0.0.1:{port}")
    assert waits, "no back-off wait was recorded: the stand-in clock is no longer in the client's path"
