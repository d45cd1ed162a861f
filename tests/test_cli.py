"""The command line (python -m portgrad): the demo checks itself, info and isas report the CPU."""
import pytest

from portgrad import _core
from portgrad.__main__ import main


def test_isas_lists_what_PORTGRAD_ISA_may_name(capsys):
    assert main(["isas"]) == 0
    names = capsys.readouterr().out.split()
    assert names == [isa for isa in ("avx512", "avx2", "scalar") if _core.isa_supported(isa)]
    assert names[-1] == "scalar"
    assert main(["isas", "--others"]) == 0
    assert capsys.readouterr().out.split() == [isa for isa in names if isa != _core.active_isa()]


def test_info_names_the_active_kernels(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"kernels: {_core.active_isa()}" in out and "GPU:" in out


def test_demo_agrees_with_finite_differences(capsys):
    assert main(["demo"]) == 0
    assert "DISAGREES" not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bogus"], ["info", "--others"]])
def test_bad_command_line_is_an_error(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_bad_environment_is_a_one_line_error(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, PORTGRAD_ISA="bogus")
    r = subprocess.run([sys.executable, "-m", "portgrad", "isas", "--others"], env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert "PORTGRAD_ISA=bogus is not one of scalar, avx2, avx512" in r.stderr and "Traceback" not in r.stderr
