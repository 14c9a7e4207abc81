"""validate_site_files: per-file results, clashes across files, and files that are not YAML."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldmon.core.site.validate import check_site_files, validate_site_files


def _site_file(folder: Path, name: str, site: str, agent: str) -> Path:
    path = folder / name
    path.write_text(
        "# a site\n"
        f"site: {site}\n"
        "name: A site\n"
        "parent_hospital: hospital-a\n"
        "agent:\n"
        f"  id: {agent}\n"
        "  broker: {host: 127.0.0.1}\n",
        encoding="utf-8",
    )
    return path


def _run(paths: list[Path]) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    status = validate_site_files(paths, out, err)
    return status, out.getvalue().splitlines(), err.getvalue().splitlines()


def test_all_good(tmp_path: Path) -> None:
    first = _site_file(tmp_path, "a.yaml", "site-a", "site-a-pi1")
    second = _site_file(tmp_path, "b.yaml", "site-b", "site-b-pi1")
    status, out, err = _run([first, second])
    assert status == 0
    assert out == [
        f"OK  {first}: site site-a (agent site-a-pi1), 0 links, 0 SNMP devices",
        f"OK  {second}: site site-b (agent site-b-pi1), 0 links, 0 SNMP devices",
    ]
    assert err == []


def test_same_site_in_two_files_names_both(tmp_path: Path) -> None:
    first = _site_file(tmp_path, "a.yaml", "site-a", "site-a-pi1")
    second = _site_file(tmp_path, "b.yaml", "site-a", "site-a-pi2")
    status, out, err = _run([first, second])
    assert status == 1
    assert out == [f"OK  {first}: site site-a (agent site-a-pi1), 0 links, 0 SNMP devices"]
    assert err[0] == (
        f"{second}:2: site: site id 'site-a' is also claimed by {first}:2; "
        "each site has exactly one file"
    )
    assert err[-1] == "1 of 2 files has problems"


def test_same_agent_at_two_sites_names_both(tmp_path: Path) -> None:
    first = _site_file(tmp_path, "a.yaml", "site-a", "shared-pi")
    second = _site_file(tmp_path, "b.yaml", "site-b", "shared-pi")
    status, _, err = _run([first, second])
    assert status == 1
    assert err[0].startswith(f"{second}:6: agent.id: agent id 'shared-pi' is also used at site")
    assert f"'site-a' ({first}:6)" in err[0]


def test_a_file_given_twice_is_checked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _site_file(tmp_path, "a.yaml", "site-a", "site-a-pi1")
    status, out, err = _run([path, Path("a.yaml"), Path("./a.yaml")])
    assert (status, len(out), err) == (0, 1, [])


def test_missing_file_and_directory(tmp_path: Path) -> None:
    good = _site_file(tmp_path, "a.yaml", "site-a", "site-a-pi1")
    missing = tmp_path / "nope.yaml"
    folder = tmp_path / "folder"
    folder.mkdir()
    status, out, err = _run([missing, good, folder])
    assert status == 1
    assert len(out) == 1
    assert err == [
        f"{missing}: cannot read file: No such file or directory",
        f"{folder}: cannot read file: Is a directory",
        "2 of 3 files have problems",
    ]


def test_invalid_file_does_not_take_part_in_clash_checks(tmp_path: Path) -> None:
    good = _site_file(tmp_path, "a.yaml", "site-a", "site-a-pi1")
    broken = _site_file(tmp_path, "b.yaml", "site-a", "Bad_Agent")
    results = check_site_files([good, broken])
    assert results[0].ok
    assert [issue.path for issue in results[1].issues] == ["agent.id"]


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    status = validate_site_files([path], out, err)
    assert status in (0, 1)
    assert status == 0 or err.getvalue().startswith(str(path))


_TEXT_PIECES = st.sampled_from(
    # Pieces that once crashed the YAML library's constructors are kept here as regressions.
    [
        "site: a\n",
        "agent:\n",
        "  id: x\n",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ": ",
        "  ",
        "\t",
        "'",
        '"',
        "&a ",
        "*a ",
        "<<: ",
        "!!binary ",
        "!!int ",
        "!!set ",
        "!!omap ",
        "!!bool ",
        "---\n",
        "? ",
        "#",
        "\n",
        "\x85",
        "links:\n",
        "  - name: 1\n",
        "\\",
        "%",
        "2001-02-30",
        "1e5",
        "~",
    ]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_TEXT_PIECES, max_size=25))
def test_yaml_shaped_garbage_never_raises(tmp_path: Path, pieces: list[str]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text("".join(pieces), encoding="utf-8")
    status, out, err = _run([path])
    if status == 0:
        assert (len(out), err) == (1, [])
        assert out[0].startswith(f"OK  {path}: ")
    else:
        # Each problem names the file (FILE:LINE: field: message), then the count.
        assert status == 1
        assert err[-1] == "1 of 1 file has problems"
        assert len(err) >= 2
        assert all(line.startswith(f"{path}:") for line in err[:-1]), err
