"""The grammar builds in strict LALR mode, every rule has a transformer method, and
the syntax is newline- and comment-aware."""

from __future__ import annotations

from tapsc.language import syntax
from tapsc.language.syntax import BinaryOp, Group, Keyword, Name, Number, parse_file, parse_value


def test_every_grammar_rule_has_a_transformer_method():
    parser = syntax.parser()
    rules = {str(rule.origin.name) for rule in parser.rules}
    aliases = {rule.alias for rule in parser.rules if rule.alias}
    public = {name for name in rules | aliases if not name.startswith("_")}
    # `?rule`s that always inline (one child) never reach the transformer
    inlined = {str(r.origin.name) for r in parser.rules if r.options.expand1}
    missing = {name for name in public - inlined if not hasattr(syntax._ToNodes, name)}
    assert not missing, f"grammar rules without a transformer method: {missing}"
    assert {"statement", "body", "pair", "group", "keyword", "number", "add", "mul", "neg"} <= public


def test_grammar_ships_in_the_package_source():
    text = syntax.grammar_text()
    assert "statement: NAME" in text and "// ====" in text


def test_newlines_inside_parentheses_and_comments():
    statements = parse_file('# header\nx (1,\n   2)  # trailing\n\n;; y { a 1 } z 3\n')
    assert [s.name for s in statements] == ["x", "y", "z"]
    assert isinstance(statements[0].words[0], Group) and len(statements[0].words[0].items) == 2


def test_arithmetic_precedence_and_spans():
    value = parse_value("-1 * (2 + w) / 4")
    assert isinstance(value, BinaryOp) and value.op == "/"
    assert (value.span.column, value.span.end_column) == (1, 17)
    name = value.left.right.items[0].right
    assert isinstance(name, Name) and name.value == "w" and name.span.column == 11


def test_hyphenated_names_and_numbers():
    (statement,) = parse_file("data fashion-mnist { eps 8/255; lr 5e-4; k = .5 }")
    assert statement.words[0].value == "fashion-mnist"
    eps, lr, k = statement.body
    assert isinstance(eps.words[0], BinaryOp)
    assert isinstance(lr.words[0], Number) and lr.words[0].value == 5e-4
    assert isinstance(k.words[0], Number) and k.words[0].value == 0.5


def test_keyword_words_and_call_groups():
    (statement,) = parse_file("split relus_in_classifier = 1 at_layer(c = 2)")
    pair, name, group = statement.words
    assert isinstance(pair, Keyword) and pair.key == "relus_in_classifier"
    assert isinstance(name, Name) and isinstance(group, Group) and group.keywords[0].key == "c"
