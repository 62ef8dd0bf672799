"""scripts/env.sh: the README's commands create and refresh the environment."""
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ensure(root: pathlib.Path) -> subprocess.CompletedProcess:
  # Offline (PIP_NO_INDEX): a requirements file without packages exercises
  # the create / keep / refresh logic; the pip upgrade finds nothing newer.
  return subprocess.run(
      ['bash', '-c', '. scripts/env.sh && ensure_venv'], cwd=root,
      capture_output=True, text=True, timeout=300,
      env={'PATH': '/usr/bin:/bin', 'PYTHON': sys.executable,
           'PIP_NO_INDEX': '1', 'HOME': str(root)})


def test_env_is_created_once_and_refreshed_when_requirements_change(
    tmp_path):
  (tmp_path / 'scripts').mkdir()
  shutil.copy(ROOT / 'scripts' / 'env.sh', tmp_path / 'scripts' / 'env.sh')
  requirements = tmp_path / 'requirements.txt'
  requirements.write_text('# no packages\n')

  first = _ensure(tmp_path)
  assert first.returncode == 0, first.stderr
  assert 'Creating' in first.stderr
  assert (tmp_path / '.venv' / 'bin' / 'python').exists()
  stamp = tmp_path / '.venv' / '.requirements.sha256'
  assert stamp.exists()

  again = _ensure(tmp_path)
  assert again.returncode == 0 and again.stderr == ''

  requirements.write_text('# no packages, changed\n')
  changed = _ensure(tmp_path)
  assert changed.returncode == 0, changed.stderr
  assert 'requirements.txt changed: refreshing' in changed.stderr
  assert _ensure(tmp_path).stderr == ''
