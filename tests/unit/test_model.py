"""The local server's models: the n-gram distribution, sampling semantics, logprob consistency,
the disk cache, and the echo model."""

from __future__ import annotations

import logging
import math
import random
import threading
from pathlib import Path
from typing import List

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkex._wire.byte_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, ByteTokenizer
from tinkex.errors import ValidationError
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL, LanguageModel, available_models, load_model
from tinkex.server.models import ngram as _ngram
from tinkex.types import SamplingParams, StopReason

WORDS = ("the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "café", "€5", "fast", "slowly", "and",
         "then", "it", "was", "good")
TOKENIZER = ByteTokenizer()


def property_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None)  # no deadline: CI machines are noisy


def small_corpus() -> str:
    """About 6 KB of sentences in 40 form-feed-separated documents, with some multi-byte characters."""
    rng = random.Random(7)
    documents = []
    for _ in range(40):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "."
                     for _ in range(rng.randint(1, 4))]
        documents.append(" ".join(sentences))
    return "\f".join(documents)


def write_corpus(directory: Path, text: str) -> str:
    path = directory / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ngram")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> _ngram.NGramModel:
    loaded = load_model(DEFAULT_MODEL, corpus_path=write_corpus(model_dir, small_corpus()), cache_dir=str(model_dir))
    assert isinstance(loaded, _ngram.NGramModel)
    return loaded


@pytest.fixture(scope="module")
def hi_model(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    """Trained on fifty documents "hi": after "hi" comes EOS, after EOS comes BOS."""
    directory = tmp_path_factory.mktemp("hi")
    return load_model(DEFAULT_MODEL, corpus_path=write_corpus(directory, "\f".join(["hi"] * 50)),
                      cache_dir=str(directory))


def context_of(history: List[int]) -> tuple:
    return tuple(history[-(_ngram.ORDER - 1):])


def f32(value: float) -> float:
    return float(np.float32(value))


def text_of(tokens: List[int]) -> bytes:
    return bytes(token for token in tokens if token < 256)


# ---------------------------------------------------------------- the distribution

contexts = st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=_ngram.ORDER - 1).map(tuple)


@property_settings(150)
@given(context=contexts)
def test_every_context_has_a_full_distribution(model: _ngram.NGramModel, context: tuple) -> None:
    p = model.distribution(context)
    assert p.shape == (VOCAB_SIZE,)
    assert np.all(p > 0)
    assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-9)


def test_the_model_learned_the_corpus(model: _ngram.NGramModel) -> None:
    after_caf = model.distribution(tuple(b"caf"))
    assert int(after_caf.argmax()) == 0xC3  # "caf" is always followed by "é"
    end_of_sentence = model.distribution(tuple(b" mat."))
    assert end_of_sentence[EOS_ID] > 0.1  # some documents end there


@property_settings(60)
@given(ids=st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=30))
def test_prompt_logprobs_score_with_the_distribution(model: _ngram.NGramModel, ids: List[int]) -> None:
    scored = model.prompt_logprobs(ids)
    history = ids if ids[0] == BOS_ID else [BOS_ID, *ids]
    offset = len(history) - len(ids)
    assert scored[0] is None and len(scored) == len(ids)
    for i in range(1, len(ids)):
        p = model.distribution(context_of(history[: offset + i]))
        assert scored[i] == f32(math.log(p[ids[i]]))


def test_topk_prompt_logprobs_rank_the_distribution(model: _ngram.NGramModel) -> None:
    prompt = TOKENIZER.encode("The cat sat")
    rows = model.topk_prompt_logprobs(prompt, 5)
    scored = model.prompt_logprobs(prompt)
    assert rows[0] is None and len(rows) == len(prompt)
    for row, actual, token in zip(rows[1:], scored[1:], prompt[1:]):
        assert row is not None and len(row) == 5
        logprobs = [logprob for _, logprob in row]
        assert logprobs == sorted(logprobs, reverse=True)
        assert row[0][1] >= actual
        assert (token, actual) in row or actual <= row[-1][1]
    full = model.topk_prompt_logprobs(prompt, 10_000)[1]
    assert full is not None and len(full) == VOCAB_SIZE
    assert math.isclose(sum(math.exp(logprob) for _, logprob in full), 1.0, abs_tol=1e-5)


def test_empty_and_bad_prompts(model: _ngram.NGramModel) -> None:
    assert model.prompt_logprobs([]) == [] and model.topk_prompt_logprobs([], 3) == []
    assert model.prompt_logprobs([65]) == [None]
    with pytest.raises(ValidationError) as info:
        model.prompt_logprobs([65, VOCAB_SIZE])
    assert (info.value.field, info.value.value) == ("prompt", VOCAB_SIZE)
    with pytest.raises(ValidationError):
        model.start([-1], SamplingParams())
    with pytest.raises(ValidationError) as info:
        model.start([65] * (model.max_context_length + 1), SamplingParams())
    assert info.value.field == "prompt"
    with pytest.raises(ValidationError) as info:
        model.topk_prompt_logprobs([65, 66], 0)
    assert info.value.field == "k"


# ---------------------------------------------------------------- sampling


def sample_tokens(model: LanguageModel, params: SamplingParams, prompt: str = "The ", index: int = 0) -> List[int]:
    return model.start(TOKENIZER.encode(prompt), params, index).run().tokens


def test_same_seed_same_tokens_and_sample_index_varies_them(model: _ngram.NGramModel) -> None:
    params = SamplingParams(max_tokens=40, seed=11, stop=[])
    first = model.sample(TOKENIZER.encode("The "), params, num_samples=4)
    again = model.sample(TOKENIZER.encode("The "), params, num_samples=4)
    assert [seq.tokens for seq in first] == [seq.tokens for seq in again]
    assert first[2].tokens == sample_tokens(model, params, index=2)
    assert len({tuple(seq.tokens) for seq in first}) > 1
    other_seed = sample_tokens(model, SamplingParams(max_tokens=40, seed=12, stop=[]))
    assert other_seed != first[0].tokens


def test_without_a_seed_every_request_is_fresh(model: _ngram.NGramModel) -> None:
    params = SamplingParams(max_tokens=60, stop=[], temperature=1.5)
    assert sample_tokens(model, params) != sample_tokens(model, params)


def test_greedy_takes_the_argmax_every_step(model: _ngram.NGramModel) -> None:
    prompt = TOKENIZER.encode("A dog ")
    sequence = model.start(prompt, SamplingParams(max_tokens=30, temperature=0, stop=[])).run()
    history = [BOS_ID, *prompt]
    for token in sequence.tokens:
        assert token == int(model.distribution(context_of(history)).argmax())
        history.append(token)
    assert sequence.tokens == sample_tokens(model, SamplingParams(max_tokens=30, temperature=0, stop=[], seed=5),
                                            prompt="A dog ")


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_top_k_of_one_is_greedy(model: _ngram.NGramModel, temperature: float) -> None:
    greedy = sample_tokens(model, SamplingParams(max_tokens=30, temperature=0, stop=[]))
    top1 = sample_tokens(model, SamplingParams(max_tokens=30, temperature=temperature, top_k=1, seed=3, stop=[]))
    assert top1 == greedy


def test_a_tiny_temperature_is_greedy_without_underflow(model: _ngram.NGramModel) -> None:
    greedy = sample_tokens(model, SamplingParams(max_tokens=30, temperature=0, stop=[]))
    assert sample_tokens(model, SamplingParams(max_tokens=30, temperature=1e-6, seed=1, stop=[])) == greedy


def ranks_of_sampled_tokens(model: _ngram.NGramModel, params: SamplingParams) -> List[tuple]:
    """For each sampled token: its rank in the model's distribution and the mass ranked above it."""
    prompt = TOKENIZER.encode("The ")
    history = [BOS_ID, *prompt]
    out = []
    for token in model.start(prompt, params).run().tokens:
        p = model.distribution(context_of(history))
        order = list(np.argsort(-p, kind="stable"))
        rank = order.index(token)
        out.append((rank, float(p[order[:rank]].sum())))
        history.append(token)
    return out


def test_top_k_and_top_p_restrict_the_candidates(model: _ngram.NGramModel) -> None:
    top3 = ranks_of_sampled_tokens(model, SamplingParams(max_tokens=200, top_k=3, seed=2, stop=[]))
    assert max(rank for rank, _ in top3) <= 2 and any(rank > 0 for rank, _ in top3)
    nucleus = ranks_of_sampled_tokens(model, SamplingParams(max_tokens=200, top_p=0.5, seed=2, stop=[]))
    assert all(mass_above < 0.5 for _, mass_above in nucleus)
    unrestricted = ranks_of_sampled_tokens(model, SamplingParams(max_tokens=200, seed=2, stop=[]))
    assert any(mass_above >= 0.5 for _, mass_above in unrestricted)


sampling_params = st.builds(
    SamplingParams,
    max_tokens=st.integers(0, 40),
    seed=st.one_of(st.none(), st.integers(-(2**63), 2**63)),
    stop=st.sampled_from([None, [], "e", ["at", " "], [EOS_ID, ord(".")]]),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    top_k=st.sampled_from([-1, 1, 4, 300]),
    top_p=st.sampled_from([1.0, 0.9, 0.3]),
)


@property_settings(80)
@given(prompt=st.sampled_from(["", "T", "The cat", "é€", "Slowly and then the dog ran under the mat."]),
       params=sampling_params)
def test_sampled_logprobs_match_prompt_logprobs(model: _ngram.NGramModel, prompt: str, params: SamplingParams) -> None:
    ids = TOKENIZER.encode(prompt)
    sequence = model.start(ids, params).run()
    scored = model.prompt_logprobs(ids + sequence.tokens)
    assert sequence.logprobs is not None and len(sequence.logprobs) == len(sequence.tokens)
    first = 1 if not ids else 0  # position 0 of a scored prompt has no logprob
    assert sequence.logprobs[first:] == scored[len(ids) + first:]


# ---------------------------------------------------------------- stop rules and lengths


def test_a_stop_string_ends_the_sequence_where_it_completes(model: _ngram.NGramModel) -> None:
    for seed in range(5):
        sequence = model.start(TOKENIZER.encode("The "), SamplingParams(seed=seed, stop=["t ", "é"])).run()
        text = text_of(sequence.tokens)
        assert sequence.stop_reason is StopReason.STOP
        assert text.endswith((b"t ", "é".encode()))
        assert b"t " not in text[:-1] and "é".encode() not in text[:-1]


def test_a_stop_token_id_ends_the_sequence_and_is_included(model: _ngram.NGramModel) -> None:
    sequence = model.start(TOKENIZER.encode("The "), SamplingParams(seed=4, stop=[ord(" ")])).run()
    assert sequence.tokens[-1] == ord(" ") and ord(" ") not in sequence.tokens[:-1]
    assert sequence.stop_reason is StopReason.STOP


def test_eos_stops_only_while_the_stop_rules_keep_it(hi_model: LanguageModel) -> None:
    greedy = {"max_tokens": 8, "temperature": 0}
    implicit = hi_model.start(TOKENIZER.encode("hi"), SamplingParams(**greedy)).run()
    assert (implicit.tokens, implicit.stop_reason) == ([EOS_ID], StopReason.STOP)
    with_strings = hi_model.start(TOKENIZER.encode("hi"), SamplingParams(stop=["zz"], **greedy)).run()
    assert (with_strings.tokens, with_strings.stop_reason) == ([EOS_ID], StopReason.STOP)
    disabled = hi_model.start(TOKENIZER.encode("hi"), SamplingParams(stop=[], **greedy)).run()
    assert disabled.tokens == [EOS_ID, BOS_ID, ord("h"), ord("i"), EOS_ID, BOS_ID, ord("h"), ord("i")]
    assert disabled.stop_reason is StopReason.LENGTH
    by_id = hi_model.start(TOKENIZER.encode("hi"), SamplingParams(stop=[ord("i")], **greedy)).run()
    assert by_id.tokens == [EOS_ID, BOS_ID, ord("h"), ord("i")]


def test_max_tokens_limits_and_reports_length(model: _ngram.NGramModel) -> None:
    nothing = model.start(TOKENIZER.encode("The"), SamplingParams(max_tokens=0))
    assert nothing.stop_reason is StopReason.LENGTH and list(nothing) == []
    five = model.start(TOKENIZER.encode("The"), SamplingParams(max_tokens=5, seed=1, stop=[])).run()
    assert (len(five.tokens), five.stop_reason) == (5, StopReason.LENGTH)
    unbounded = model.start([], SamplingParams(seed=1, stop=[])).run()
    assert (len(unbounded.tokens), unbounded.stop_reason) == (model.default_max_tokens, StopReason.LENGTH)


def test_generation_stops_at_the_context_length(model: _ngram.NGramModel) -> None:
    prompt = [ord("a")] * (model.max_context_length - 3)  # plus the implicit BOS leaves room for 2
    sequence = model.start(prompt, SamplingParams(max_tokens=10, stop=[], seed=0)).run()
    assert (len(sequence.tokens), sequence.stop_reason) == (2, StopReason.LENGTH)


def test_stop_reason_is_known_at_the_last_token(model: _ngram.NGramModel) -> None:
    generation = model.start(TOKENIZER.encode("The"), SamplingParams(max_tokens=3, seed=1, stop=[]))
    seen = [generation.stop_reason for _ in generation]
    assert seen == [None, None, StopReason.LENGTH]
    assert list(generation) == [] and len(generation.tokens) == 3


def test_an_explicit_bos_is_not_doubled(model: _ngram.NGramModel) -> None:
    params = SamplingParams(max_tokens=20, seed=9, stop=[])
    with_bos = model.start(TOKENIZER.encode("The", add_bos=True), params).run()
    assert with_bos.tokens == model.start(TOKENIZER.encode("The"), params).run().tokens


# ---------------------------------------------------------------- sharing and the cache


def test_threads_and_cache_eviction_do_not_change_results(
    model: _ngram.NGramModel, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = SamplingParams(max_tokens=300, seed=21, stop=[], temperature=1.3)
    expected = model.sample(TOKENIZER.encode("The "), params, 4)
    monkeypatch.setattr(_ngram, "_CACHE_ENTRIES", 8)
    fresh = load_model(DEFAULT_MODEL, corpus_path=str(model_dir / "corpus.txt"), cache_dir=str(model_dir))
    results: List[object] = [None] * 4

    def work(slot: int) -> None:
        results[slot] = fresh.sample(TOKENIZER.encode("The "), params, 4)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result == expected for result in results)
    assert len(fresh._cache) <= 8  # the bound is the point of this test


def test_the_trained_model_is_cached_and_reloaded(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path, small_corpus())
    trained = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(tmp_path / "cache"))
    assert isinstance(trained, _ngram.NGramModel) and not trained.from_cache
    assert trained.cache_path is not None and Path(trained.cache_path).parent == tmp_path / "cache"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(trained.cache_path).name]
    reloaded = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(tmp_path / "cache"))
    assert isinstance(reloaded, _ngram.NGramModel) and reloaded.from_cache
    for (keys, counts), (keys2, counts2) in zip(trained.grams, reloaded.grams):
        assert np.array_equal(keys, keys2) and np.array_equal(counts, counts2)
    prompt = TOKENIZER.encode("The cat sat on the mat.")
    assert trained.prompt_logprobs(prompt) == reloaded.prompt_logprobs(prompt)


def test_a_different_corpus_gets_its_own_cache_entry(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = load_model(DEFAULT_MODEL, corpus_path=write_corpus(tmp_path, "one text"), cache_dir=cache)
    second = load_model(DEFAULT_MODEL, corpus_path=write_corpus(tmp_path, "another text"), cache_dir=cache)
    assert isinstance(first, _ngram.NGramModel) and isinstance(second, _ngram.NGramModel)
    assert first.cache_path != second.cache_path and not second.from_cache


def corrupt_by_truncating(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def corrupt_with_garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all")


def corrupt_by_lying_about_the_version(path: Path) -> None:
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["version"] = np.array([_ngram.MODEL_VERSION + 1, _ngram.ORDER])
    with open(path, "wb") as out:
        np.savez(out, **arrays)


def corrupt_a_table(path: Path) -> None:
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["keys3"] = arrays["keys3"][::-1].copy()
    with open(path, "wb") as out:
        np.savez(out, **arrays)


def corrupt_into_a_plain_array(path: Path) -> None:
    with open(path, "wb") as out:
        np.save(out, np.arange(10))  # a valid .npy, not the .npz archive of tables


def corrupt_by_emptying_every_table(path: Path) -> None:
    arrays = {"version": np.array([_ngram.MODEL_VERSION, _ngram.ORDER])}
    for length in range(1, _ngram.ORDER + 1):
        arrays[f"keys{length}"] = np.zeros(0, dtype=np.int64)
        arrays[f"counts{length}"] = np.zeros(0, dtype=np.int32)
    with open(path, "wb") as out:
        np.savez(out, **arrays)


@pytest.mark.parametrize(
    "corrupt", [corrupt_by_truncating, corrupt_with_garbage, corrupt_by_lying_about_the_version, corrupt_a_table,
                corrupt_into_a_plain_array, corrupt_by_emptying_every_table]
)
def test_an_unusable_cache_is_retrained_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     corrupt) -> None:
    corpus = write_corpus(tmp_path, small_corpus())
    trained = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(tmp_path))
    assert isinstance(trained, _ngram.NGramModel) and trained.cache_path is not None
    corrupt(Path(trained.cache_path))
    with caplog.at_level(logging.WARNING, logger="tinkex.server.models.ngram"):
        retrained = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(tmp_path))
    assert isinstance(retrained, _ngram.NGramModel) and not retrained.from_cache
    assert "retraining" in caplog.text
    again = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(tmp_path))
    assert isinstance(again, _ngram.NGramModel) and again.from_cache


def test_an_unwritable_cache_only_costs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="tinkex.server.models.ngram"):
        loaded = load_model(DEFAULT_MODEL, corpus_path=write_corpus(tmp_path, "some text"),
                            cache_dir=str(blocker / "cache"))
    assert "cannot cache" in caplog.text
    assert loaded.prompt_logprobs([65, 66])[1] is not None


def test_a_directory_in_the_cache_path_costs_a_retrain_and_leaves_no_temporary_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = write_corpus(tmp_path, "text whose cache entry is blocked")
    cache = tmp_path / "cache"
    trained = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(cache))
    assert isinstance(trained, _ngram.NGramModel) and trained.cache_path is not None
    blocked = Path(trained.cache_path)
    blocked.unlink()
    blocked.mkdir()
    (blocked / "keep").write_text("a directory cannot be replaced by a file")
    with caplog.at_level(logging.WARNING, logger="tinkex.server.models.ngram"):
        retrained = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=str(cache))
    assert isinstance(retrained, _ngram.NGramModel) and not retrained.from_cache
    assert "ignoring the unusable model cache" in caplog.text and "cannot cache the trained model at" in caplog.text
    assert sorted(p.name for p in cache.iterdir()) == [blocked.name]  # the temporary file was removed
    assert retrained.prompt_logprobs([65, 66]) == trained.prompt_logprobs([65, 66])


def test_without_pydoc_data_the_default_corpus_is_the_builtins_docstrings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import builtins
    import sys

    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # as in distributions that strip it
    with caplog.at_level(logging.WARNING, logger="tinkex.server.models.ngram"):
        documents = _ngram.default_documents()
    assert "pydoc_data is missing" in caplog.text
    expected = [obj.__doc__.encode("utf-8") for obj in vars(builtins).values() if isinstance(obj.__doc__, str)]
    assert documents == expected and len(documents) > 50


def test_a_model_trained_from_documents_is_not_cached() -> None:
    model = _ngram.NGramModel.from_documents([b"the cat sat on the mat. " * 5])
    assert model.cache_path is None and not model.from_cache
    greedy = SamplingParams(max_tokens=6, temperature=0)
    assert bytes(model.sample(list(b"the c"), greedy, 1)[0].tokens) == b"at sat"


def test_a_corpus_shorter_than_the_model_order_trains_and_scores_prompts(tmp_path: Path) -> None:
    # BOS a b EOS: four tokens, so no 5- or 6-grams at all (training used to fail with a numpy
    # broadcast ValueError on any corpus shorter than the order, e.g. an empty file)
    corpus, cache = write_corpus(tmp_path, "ab"), str(tmp_path / "cache")
    model = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=cache)
    assert isinstance(model, _ngram.NGramModel) and len(model.grams[-1][0]) == 0
    ids = list(b"abababab")
    scored = model.prompt_logprobs(ids)
    history = [BOS_ID, *ids]
    for i in range(1, len(ids)):
        p = model.distribution(context_of(history[: 1 + i]))
        assert scored[i] == f32(math.log(p[ids[i]]))
    reloaded = load_model(DEFAULT_MODEL, corpus_path=corpus, cache_dir=cache)
    assert isinstance(reloaded, _ngram.NGramModel) and reloaded.from_cache
    assert reloaded.prompt_logprobs(ids) == scored
    empty = load_model(DEFAULT_MODEL, corpus_path=write_corpus(tmp_path, ""), cache_dir=cache)
    assert all(lp is not None and lp < 0 for lp in empty.prompt_logprobs([65, 66, 67])[1:])


class FixedDraw:
    """A generator whose every draw is ``value`` (1.0: the top of the range, where rounding can land)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_a_draw_at_the_very_top_picks_the_last_token_with_weight_not_a_zero_one() -> None:
    weights = np.array([0.25, 0.75, 0.0, 0.0])
    assert _ngram._draw(weights, FixedDraw(1.0)) == 1  # type: ignore[arg-type]
    assert _ngram._draw(weights, FixedDraw(0.2)) == 0  # type: ignore[arg-type]


def test_the_cache_directory_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKEX_CACHE_DIR", str(tmp_path / "env-cache"))
    loaded = load_model(DEFAULT_MODEL, corpus_path=write_corpus(tmp_path, "env text"))
    assert isinstance(loaded, _ngram.NGramModel) and loaded.cache_path is not None
    assert Path(loaded.cache_path).parent == tmp_path / "env-cache"


def test_an_unreadable_corpus_is_a_validation_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(ValidationError) as info:
        load_model(DEFAULT_MODEL, corpus_path=missing, cache_dir=str(tmp_path))
    assert (info.value.field, info.value.value) == ("corpus_path", missing)


def test_the_default_corpus_trains_a_working_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = str(tmp_path_factory.mktemp("default"))
    default = load_model(DEFAULT_MODEL, cache_dir=cache)
    assert isinstance(default, _ngram.NGramModel) and not default.from_cache
    assert sum(len(keys) for keys, _ in default.grams) > 100_000
    prompt = TOKENIZER.encode("The for statement is used to iterate over the elements of a sequence")
    bits_per_byte = -sum(lp for lp in default.prompt_logprobs(prompt)[1:] if lp is not None) / len(prompt) / math.log(2)
    assert bits_per_byte < 2.0  # text like its corpus is predictable; a uniform model scores 8.0
    assert load_model(DEFAULT_MODEL, cache_dir=cache).prompt_logprobs(prompt) == default.prompt_logprobs(prompt)


# ---------------------------------------------------------------- names and the echo model


def test_model_names() -> None:
    assert available_models() == [DEFAULT_MODEL, ECHO_MODEL] == ["tinkex/ngram-small", "tinkex/echo"]
    with pytest.raises(KeyError) as info:
        load_model("tinkex/gpt-9")
    assert "tinkex/gpt-9" in str(info.value)
    with pytest.raises(ValueError):
        load_model("tinkex/gpt-9")
    with pytest.raises(ValidationError) as validation:
        load_model("")
    assert (validation.value.field, validation.value.value) == ("base_model", "")


def test_echo_plays_the_prompt_back_shifted_by_seed_and_index() -> None:
    echo = load_model(ECHO_MODEL)
    assert (echo.tokenizer_id, echo.vocab_size, echo.max_context_length) == ("tinkex/byte", VOCAB_SIZE, 8192)
    prompt = TOKENIZER.encode("abc")
    assert echo.start(prompt, SamplingParams(max_tokens=5)).run().tokens == list(b"abcab")
    seeded = echo.sample(prompt, SamplingParams(max_tokens=4, seed=1), num_samples=2)
    assert [seq.tokens for seq in seeded] == [list(b"bcdb"), list(b"cdec")]
    assert seeded == echo.sample(prompt, SamplingParams(max_tokens=4, seed=1), num_samples=2)
    assert echo.start([255], SamplingParams(max_tokens=1, seed=1)).run().tokens == [0]
    assert echo.start([], SamplingParams(max_tokens=4)).run().tokens == list(b"echo")


def test_echo_lengths_and_stops() -> None:
    echo = load_model(ECHO_MODEL)
    default = echo.start(TOKENIZER.encode("xy"), SamplingParams()).run()
    assert (len(default.tokens), default.stop_reason) == (16, StopReason.LENGTH)
    stopped = echo.start(TOKENIZER.encode("abc"), SamplingParams(stop=[ord("c")])).run()
    assert (stopped.tokens, stopped.stop_reason) == (list(b"abc"), StopReason.STOP)
    by_string = echo.start(TOKENIZER.encode("abc"), SamplingParams(stop="ca")).run()
    assert by_string.tokens == list(b"abca")
    assert echo.start([EOS_ID], SamplingParams(max_tokens=2)).run().tokens == [1, 1]  # echo emits bytes only


def test_echo_logprobs_are_consistent() -> None:
    echo = load_model(ECHO_MODEL)
    prompt = TOKENIZER.encode("hello")
    sequence = echo.start(prompt, SamplingParams(max_tokens=6, seed=3)).run()
    assert sequence.logprobs == echo.prompt_logprobs(prompt + sequence.tokens)[len(prompt):]
    assert sequence.logprobs == [f32(-math.log(VOCAB_SIZE))] * 6
    rows = echo.topk_prompt_logprobs(prompt, 3)
    uniform = sequence.logprobs[0]
    assert rows[0] is None and rows[1] == [(0, uniform), (1, uniform), (2, uniform)]
    assert echo.prompt_logprobs([]) == [] and echo.prompt_logprobs([7]) == [None]
