"""What a user sees on a terminal: `sepcli separate` and `sepcli train` run in a pseudo-terminal draw a rich
progress bar (file name and percentage; steps done of total and the loss) and the summary table, while the same
commands with stderr piped print no bar and no terminal control codes (what scripts and log files get)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.faultnets import slow_folder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SR = 8000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(args: list[str], terminal: bool) -> tuple[int, str, str]:
    """`sepcli ARGS` (with the test networks registered); stderr is a 160-column pseudo-terminal or a pipe."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HOME=tempfile.gettempdir(),
               TERM="xterm-256color", COLUMNS="160")
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "tests.faultnets", *args]
    if not terminal:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    out = p.stdout.read().decode()
    p.wait(timeout=180)
    os.close(master)
    return p.returncode, out, b"".join(chunks).decode(errors="replace")


def test_separate_draws_a_bar_and_a_table_on_a_terminal_and_plain_lines_otherwise(tmp_path):
    # 24 s at 8 kHz: three read blocks of 65536 frames, so the bar passes 34 % and 68 % on its way
    model = slow_folder(tmp_path / "slow", sample_rate=SR, segment=0.5, delay=0.05)
    x = np.random.default_rng(0).standard_normal(SR * 24).astype(np.float32) * 0.1
    sf.write(tmp_path / "talk.wav", x, SR)
    rc, _, err = run(["separate", str(tmp_path / "talk.wav"), "-o", str(tmp_path / "tty"), "-m", str(model)], True)
    assert rc == 0, err
    text = ANSI.sub("", err)
    assert ANSI.search(err), "no terminal control codes: no live bar was drawn"
    assert re.search(r"talk\.wav [━╸╺]+\s+(3[0-9]|6[0-9])% ", text), text[-2000:]  # file name, bar, part done
    assert re.search(r"talk\.wav [━╸╺]+\s+100% ", text)
    assert re.search(r"┃\s*input\s*┃\s*status\s*┃\s*outputs", text)  # the summary table: one row, 2 outputs
    assert re.search(r"│\s*\S*talk\.wav\s*│\s*ok\s*│\s*2\s*│", text), text[-1500:]
    assert sorted(p.name for p in (tmp_path / "tty").iterdir()) == ["talk_spk1.wav", "talk_spk2.wav"]

    rc, _, err = run(["separate", str(tmp_path / "talk.wav"), "-o", str(tmp_path / "pipe"), "-m", str(model)], False)
    assert rc == 0, err
    assert not ANSI.search(err) and "━" not in err and "%" not in err


def test_train_draws_steps_and_loss_on_a_terminal_and_log_lines_otherwise(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("mix", "s1", "s2"):
        (tmp_path / "lm" / sub).mkdir(parents=True)
    for i in range(4):
        a, b = rng.standard_normal((2, SR)).astype(np.float32) * 0.1
        sf.write(tmp_path / "lm" / "s1" / f"{i}.wav", a, SR)
        sf.write(tmp_path / "lm" / "s2" / f"{i}.wav", b, SR)
        sf.write(tmp_path / "lm" / "mix" / f"{i}.wav", a + b, SR)
    args = ["train", "--arch", "s4m-tiny-8k", "--data", str(tmp_path / "lm"), "--segment", "0.5",
            "--batch-size", "2", "--steps", "4", "--threads", "1"]
    rc, _, err = run([*args, "--out", str(tmp_path / "tty")], True)
    assert rc == 0, err
    text = ANSI.sub("", err)
    assert ANSI.search(err)
    assert re.search(r"training [━╸╺]+\s+4/4\s+loss -?\d+\.\d{3}", text), text[-2000:]
    assert not re.search(r"^step \d+/4", text, re.M)  # the bar replaces the log lines
    assert (tmp_path / "tty" / "best" / "weights.safetensors").exists()

    rc, _, err = run([*args, "--out", str(tmp_path / "pipe")], False)
    assert rc == 0, err
    assert not ANSI.search(err) and "━" not in err
    assert re.search(r"^step 4/4 loss -?\d+\.\d{3} \d+\.\d\d s/step ETA 0s$", err, re.M), err
