"""utils.core.errors: expected errors and Ctrl-C become one line; everything else keeps its traceback."""
import pytest

from utils.core.errors import exit_on, one_line


def test_expected_error_is_one_line_with_optional_type():
    with pytest.raises(SystemExit) as e, exit_on('prog', (ValueError,)):
        raise ValueError('bad\n  file   x.yaml')
    assert e.value.code == 'prog: bad file x.yaml'
    with pytest.raises(SystemExit) as e, exit_on('prog', lambda: (ValueError,), typed=(ValueError,)):
        raise ValueError('bad')
    assert e.value.code == 'prog: ValueError: bad'


def test_other_errors_keep_their_traceback():
    with pytest.raises(KeyError), exit_on('prog', (ValueError,)):
        raise KeyError('a bug')


def test_ctrl_c_is_interrupted_with_status_130(capsys):
    with pytest.raises(SystemExit) as e, exit_on('val.py', (ValueError,)):
        raise KeyboardInterrupt
    assert e.value.code == 130 and capsys.readouterr().err == '\nval.py: interrupted\n'


def test_one_line_limit():
    assert one_line('a\nb  c', limit=3) == 'a b'
