"""Record the sample captures: real sessions through xmppspy to a real Prosody.

Run from the repository root with the test dependencies installed (see README, Development):
    .venv/bin/python scripts/record-sample.py
It starts throwaway Prosody servers (Debian's prosody package), runs two slixmpp clients through
``xmppspy proxy --record`` and writes two captures:

- captures/prosody-chat.jsonl: plaintext (a Prosody that does not require TLS);
- captures/prosody-tls.jsonl: a Prosody that requires TLS, its certificate from a throwaway CA,
  with STARTTLS intercepted (the clients trust a throwaway xmppspy CA, never the user's).

Credentials are redacted as by default.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.clients import run_chat_scenario  # noqa: E402
from support.prosody import ProsodyServer, tls_prosody  # noqa: E402
from support.proxy import ProxyProcess  # noqa: E402

SCRIPT = {
    ("alice", "bob"): ("Hi Bob! Is the build green?", "It says 1 < 2 && 3 > 2 ☃"),
    ("bob", "alice"): ("Green here 🎉", "Ünïcödé works too: 日本語"),
}
USERS = {"alice": "alice-sample-pw", "bob": "bob-sample-pw"}
CAPTURES = ROOT / "captures"


async def record(
    workdir: Path, prosody: ProsodyServer, target: Path, options: tuple[str, ...] = ()
) -> None:
    """One chat through the proxy, recorded to ``target`` (options: the proxy's TLS ones)."""
    capture = workdir / "session.jsonl"
    proxy = ProxyProcess(
        workdir,
        f"{prosody.host}:{prosody.c2s_port}",
        ("--record", str(capture), "-q", *options),
    )
    client_ca = workdir / "xmppspy-ca.pem" if options else None
    if client_ca is not None:
        subprocess.run(
            [sys.executable, "-m", "xmppspy", "ca", "--export", str(client_ca)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    proxy.start()
    try:
        result = await trio.to_thread.run_sync(
            functools.partial(
                run_chat_scenario,
                "127.0.0.1",
                proxy.port,
                prosody.domain,
                prosody.users,
                script=SCRIPT,
                tls_ca=client_ca,
            )
        )
        result.assert_ok()
        proxy.stop()
    finally:
        proxy.kill()
    CAPTURES.mkdir(exist_ok=True)
    shutil.copyfile(capture, target)
    target.chmod(0o644)
    print(f"wrote {target.relative_to(ROOT)}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["XMPPSPY_HOME"] = str(workdir / "xmppspy-home")  # the proxy inherits it
        with ProsodyServer(workdir / "prosody", users=USERS) as prosody:
            await record(workdir, prosody, CAPTURES / "prosody-chat.jsonl")
        tls, server_ca = tls_prosody(workdir / "tls", USERS)
        with tls:
            options = ("--upstream-ca", str(server_ca))
            await record(workdir, tls, CAPTURES / "prosody-tls.jsonl", options)


if __name__ == "__main__":
    trio.run(main)
