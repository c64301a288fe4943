"""Record captures/prosody-chat.jsonl: a real session through xmppspy to a real Prosody.

Run from the repository root with the test dependencies installed (see README, Development):
    .venv/bin/python scripts/record-sample.py
It starts a throwaway Prosody (Debian's prosody package), runs two slixmpp clients through
``xmppspy proxy --record`` and writes the capture. Credentials are redacted as by default.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.clients import run_chat_scenario  # noqa: E402
from support.prosody import ProsodyServer  # noqa: E402
from support.proxy import ProxyProcess  # noqa: E402

SCRIPT = {
    ("alice", "bob"): ("Hi Bob! Is the build green?", "It says 1 < 2 && 3 > 2 ☃"),
    ("bob", "alice"): ("Green here 🎉", "Ünïcödé works too: 日本語"),
}
TARGET = ROOT / "captures" / "prosody-chat.jsonl"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        users = {"alice": "alice-sample-pw", "bob": "bob-sample-pw"}
        with ProsodyServer(workdir / "prosody", users=users) as prosody:
            capture = workdir / "session.jsonl"
            proxy = ProxyProcess(
                workdir, f"{prosody.host}:{prosody.c2s_port}", ("--record", str(capture), "-q")
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
                    )
                )
                result.assert_ok()
                proxy.stop()
            finally:
                proxy.kill()
        TARGET.parent.mkdir(exist_ok=True)
        shutil.copyfile(capture, TARGET)
        TARGET.chmod(0o644)
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    trio.run(main)
