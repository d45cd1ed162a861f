"""The README's Python examples run as written (every ```python block, in order, in one namespace)."""
import os
import re
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the quickstart saves a file
    shutil.copy(os.path.join(ROOT, "tests", "data", "onnx", "lenet-ts-18.onnx"), tmp_path / "lenet.onnx")
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "model.pgnet").exists()
