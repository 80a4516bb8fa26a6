"""Issue 24: a value anyone may write never reaches a viewer's terminal as control characters."""

from __future__ import annotations

import io

from helpers import launch, pbt

from pbt_mq.core.terminal import SafeStream, escape_controls, safe_tree

EVIL = "\x1b]0;TITLE\x07\x1b[2J\u202eevil\x9b"


def test_control_characters_become_visible_escapes():
    assert escape_controls(EVIL) == "\\x1b]0;TITLE\\x07\\x1b[2J\\u202eevil\\x9b"
    assert escape_controls("a\tb\nc é ✓") == "a\tb\nc é ✓"  # text, tabs and newlines are not touched
    assert safe_tree({"k\x1b": [EVIL, 1, None]}) == {"k\\x1b": [escape_controls(EVIL), 1, None]}
    out = io.StringIO()
    assert SafeStream(out).write(EVIL) == len(EVIL) and "\x1b" not in out.getvalue()


def test_a_categorical_value_with_escapes_is_shown_escaped(redis_url, tmp_path):
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=2", "hparams.tag.type=categorical",
                 f"hparams.tag.values={[EVIL, 'plain']!r}".replace("'", '"').replace("\\x", "\\u00"))
    for args in (("status", exp), ("top", exp, "--once"), ("list",)):
        res = pbt(*args, "--redis", redis_url)
        assert res.returncode == 0, (args, res.stderr)
        assert "\x1b" not in res.stdout + res.stderr and "\x9b" not in res.stdout, (args, res.stdout)
    assert "\\x1b]0;TITLE" in pbt("status", exp, "--redis", redis_url).stdout
