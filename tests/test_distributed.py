import subprocess
import sys

END_RANK = ("import sys; from ds_deblur import distributed; "
            "print('results written', end=''); sys.stderr.write('a warning'); distributed.end_rank({code})")


def test_end_rank_exits_with_the_code_and_loses_no_output():
    # Piped stdout is block-buffered: os._exit without the flush would drop the line.
    proc = subprocess.run([sys.executable, "-c", END_RANK.format(code=3)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "results written"
    assert proc.stderr.endswith("a warning")
