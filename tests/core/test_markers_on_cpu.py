import time

import pytest

from duet_verl.core.markers import (
    BalancedMarker,
    LiteralMarker,
    MarkerSpec,
    PairedMarker,
    RegexMarker,
    RepeatedLiteralMarker,
    build_detectors,
)


def feed_pieces(detectors, text, piece=3):
    """Feed ``text`` in small pieces; return the index of the piece at which any detector fired, or None."""
    for i in range(0, len(text), piece):
        if any(d.feed(text[i : i + piece]) for d in detectors):
            return i
    return None


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        ("math", "so x = 4 and the result is \\boxed{\\frac{1}{2}} done"),
        ("math", "we get \\boxed[3]"),
        ("math", "## Final Answer\nThe value is 7"),
        ("math", "Final answer: 42"),
        ("code", "Here:\n```python\nprint(1)\n```\n"),
        ("generic", "<answer>12</answer>"),
        ("generic", "<final_answer>x</final_answer>"),
        ("generic", "Therefore, the answer is 12."),
    ],
)
@pytest.mark.parametrize("piece", [1, 2, 5, 1000])
def test_each_builtin_marker_is_found_whatever_the_split(domain, text, piece):
    assert feed_pieces(build_detectors(MarkerSpec(domains=(domain,))), text, piece) is not None


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        ("math", "the answer will be \\boxed{\\frac{1}{2} and I keep going"),  # unclosed
        ("math", "boxed{3} without the backslash"),
        ("math", "Final answer:   "),  # nothing after the colon yet
        ("code", "```python\nprint(1)\n"),  # one fence only
        ("generic", "<answer>12"),
        ("generic", "</answer> before <answer>"),
        ("generic", "Therefore, the answer is"),
    ],
)
def test_incomplete_markers_are_not_found(domain, text):
    assert feed_pieces(build_detectors(MarkerSpec(domains=(domain,))), text, 1) is None


def test_boxed_nested_braces_close_only_at_depth_zero():
    det = BalancedMarker("\\boxed", "{", "}")
    assert not det.feed("\\boxed{a{b}")
    assert not det.feed("{c}")
    assert det.feed("}")


def test_boxed_opener_split_across_pieces_and_closed_in_same_piece():
    det = BalancedMarker("\\boxed", "{", "}")
    assert not det.feed("answer \\bo")
    assert det.feed("xed{7} more")


def test_literal_and_paired_marker_state():
    lit = LiteralMarker("## Final Answer")
    assert not lit.feed("## Final")
    assert lit.feed(" Answer")
    pair = PairedMarker("<answer>", "</answer>")
    assert not pair.feed("<ans")
    assert not pair.feed("wer>5</ans")
    assert pair.feed("wer>")


def test_repeated_literal_counts_without_double_counting():
    det = RepeatedLiteralMarker("```", times=2)
    assert not det.feed("``")
    assert not det.feed("`code")  # first fence completes across pieces
    assert det.feed("``` ")


def test_user_regex_and_bounded_window():
    spec = MarkerSpec(domains=(), regexes=(r"ANSWER=\d+",))
    assert feed_pieces(build_detectors(spec), "blah ANSWER=12", 2) is not None
    with pytest.raises(ValueError, match="regex"):
        MarkerSpec(domains=(), regexes=("(unclosed",))
    with pytest.raises(ValueError, match="domain"):
        MarkerSpec(domains=("poetry",))
    with pytest.raises(ValueError, match="at least one"):
        MarkerSpec(domains=())
    with pytest.raises(ValueError, match="overlap"):
        RegexMarker("x", overlap=-1)


@pytest.mark.parametrize(
    "adversarial",
    [
        "\\boxed{" + "{" * 200_000,
        "\\boxed{" + "{}" * 100_000,
        "\\boxed" * 40_000,
        "Final answer:" + " " * 200_000,
        "<answer>" + "<" * 200_000,
        "`" * 200_000,
    ],
)
def test_adversarial_tails_cost_linear_time(adversarial):
    # fed in token-sized pieces the whole text must take well under a second: work is linear in the text
    detectors = build_detectors(MarkerSpec(domains=("math", "code", "generic")))
    start = time.perf_counter()
    for i in range(0, len(adversarial), 4):
        chunk = adversarial[i : i + 4]
        for d in detectors:
            d.feed(chunk)
    assert time.perf_counter() - start < 5.0


def test_a_prompt_rule_switched_to_the_code_domain_finds_fences_not_boxes_and_keeps_regexes():
    from duet_verl.core.settings import DuetSettings

    stop = DuetSettings.from_mapping({"stop": {"marker_regexes": ["DONE!"]}}).stop
    math_rule = stop.prompt_rule(k1=10, k2=20, threshold=0.5, run_seed=0, step=1)
    code_rule = math_rule.with_marker_domains(("code",))
    assert code_rule.monitor.markers == MarkerSpec(domains=("code",), regexes=("DONE!",))
    assert math_rule.monitor.markers.domains == ("math", "generic")  # the original is unchanged
    assert code_rule.monitor.k1 == 10 and code_rule.step == 1  # everything but the markers is kept
    boxed, fenced = "so it is \\boxed{42} here", "```python\nx = 1\n``` here"
    assert feed_pieces(build_detectors(code_rule.monitor.markers), boxed) is None
    assert feed_pieces(build_detectors(code_rule.monitor.markers), fenced) is not None
    assert feed_pieces(build_detectors(code_rule.monitor.markers), "and DONE! now") is not None
    assert feed_pieces(build_detectors(math_rule.monitor.markers), boxed) is not None
    assert feed_pieces(build_detectors(math_rule.monitor.markers), fenced) is None
