"""Few-shot prompt construction: layout, demonstration selection, clean-up of generations."""
import pytest

from lmcor.sampling import prompts


def _rec(i, source, ref=None):
    return {"id": f"d{i}", "source": source, "references": [ref or f"ref {i}"], "candidates": [],
            "meta": {}}


DEMOS = [_rec(i, f"name[Place{i}], food[Food{i}]") for i in range(12)]


def test_every_task_has_three_named_variants():
    for task in ("e2e", "jfleg", "wmt"):
        assert len([t for t in prompts.VARIANTS.values() if t.task == task]) >= 3


def test_prompt_layout_is_instruction_demos_then_query():
    cfg = prompts.PromptConfig(variant="jfleg_corrected", num_shots=2, selection="fixed")
    demos = [_rec(0, "he go home", "He goes home."), _rec(1, "i has cat", "I have a cat.")]
    (built,) = prompts.PromptBuilder(cfg, demos + [_rec(2, "x", "X.")]).build(
        [{"id": "q", "source": "they was late"}])
    shots = built["prompt"].split("\n\n")
    assert shots[0] == "Correct the grammatical and spelling errors in the sentence."
    assert len(shots) == 4
    assert shots[-1] == "Original: they was late\nCorrected:"
    for shot in shots[1:3]:
        src, out = shot.split("\n")
        assert src.startswith("Original: ") and out.startswith("Corrected: ")
    # The chat form carries the same demonstrations as alternating turns.
    roles = [m["role"] for m in built["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert built["messages"][-1]["content"] == "Original: they was late"


def test_fixed_selection_is_shared_seeded_and_never_the_query_itself():
    cfg = prompts.PromptConfig(variant="e2e_mr", num_shots=5, selection="fixed", seed=3)
    builder = prompts.PromptBuilder(cfg, DEMOS)
    picks = builder.select([{"id": "q1", "source": "unrelated"}, {"id": "q2", "source": "x"}])
    assert [d["id"] for d in picks[0]] == [d["id"] for d in picks[1]]
    assert len(picks[0]) == 5
    # A query from the demonstration split must not be shown its own answer.
    for own in picks[0]:
        again = builder.select([{"id": "own", "source": own["source"]}])[0]
        assert own["id"] not in [d["id"] for d in again] and len(again) == 5
    other = prompts.PromptBuilder(prompts.PromptConfig("e2e_mr", 5, "fixed", seed=4), DEMOS)
    assert [d["id"] for d in other.select([{"id": "q1", "source": "u"}])[0]] != \
        [d["id"] for d in picks[0]]


def test_random_selection_depends_on_example_id_not_on_batching():
    cfg = prompts.PromptConfig(variant="e2e_mr", num_shots=3, selection="random", seed=0)
    builder = prompts.PromptBuilder(cfg, DEMOS)
    queries = [{"id": f"q{i}", "source": f"s{i}"} for i in range(6)]
    together = builder.build(queries)
    alone = [builder.build([q])[0] for q in reversed(queries)][::-1]
    assert together == alone
    assert len({tuple(b["shot_ids"]) for b in together}) > 1


def test_bm25_selection_puts_the_most_similar_demonstration_last():
    cfg = prompts.PromptConfig(variant="e2e_mr", num_shots=3, selection="bm25")
    builder = prompts.PromptBuilder(cfg, DEMOS)
    (shots,) = builder.select([{"id": "q", "source": "name[Place7], food[Food7], area[riverside]"}])
    assert len(shots) == 3 and shots[-1]["id"] == "d7"
    # The demonstration with exactly the query's source is excluded.
    (shots,) = builder.select([{"id": "q", "source": DEMOS[7]["source"]}])
    assert "d7" not in [d["id"] for d in shots]


def test_postprocess_cuts_at_the_next_demonstration_marker():
    builder = prompts.PromptBuilder(prompts.PromptConfig("e2e_attributes", 0), [])
    raw = " Blue Spice is a coffee shop.\n\nAttributes: name[X]\nSentence: X is..."
    assert builder.postprocess(raw) == "Blue Spice is a coffee shop."
    assert builder.postprocess(" Fine.\nSentence: again") == "Fine."
    assert builder.postprocess("Sentence: echoed prefix") == "echoed prefix"
    assert builder.postprocess("a ### b", extra_stops=["###"]) == "a"
    assert "\nAttributes:" in builder.stop_sequences()


def test_unknown_variant_and_bad_selection_are_clear_errors():
    with pytest.raises(ValueError, match="unknown prompt variant 'e2e_nope'.*e2e_mr"):
        prompts.PromptConfig(variant="e2e_nope")
    with pytest.raises(ValueError, match="selection='closest'"):
        prompts.PromptConfig(variant="e2e_mr", selection="closest")


def test_too_few_demonstrations_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 5 demonstrations.*only 3"):
        prompts.PromptBuilder(prompts.PromptConfig("e2e_mr", 5), DEMOS[:3])


def test_keyed_seed_is_stable_and_distinct():
    assert prompts.keyed_seed(0, "a") == prompts.keyed_seed(0, "a")
    assert len({prompts.keyed_seed(s, i) for s in range(3) for i in "abc"}) == 9
    assert 0 <= prompts.keyed_seed(1, "x") < 2 ** 63
