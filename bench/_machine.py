"""What both benchmark suites (run.py, gpu.py) record about the machine and the checkout."""
import os
import platform
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def publish(text, markdown=None):
    """Prints a benchmark's table and, with --markdown, writes it there too."""
    print(text)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
