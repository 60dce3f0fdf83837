"""The tokenizer registry: built-ins, tokenizer.json files, the HF cache, caching and incremental text.

Hugging Face tokenizers are built offline in tmp_path with the ``tokenizers`` library; nothing
is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import property_settings
from tinkex import tokenizers as tk
from tinkex.errors import ValidationError
from tinkex.types import ModelInput, SampledSequence, SampleResponse

tokenizers_lib = pytest.importorskip("tokenizers")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine; naïve café déjà vu",
    "tokenizers split words into pieces, and pieces into bytes",
    "日本語のテキストと絵文字 🙂 also appear here",
] * 20


@pytest.fixture(autouse=True)
def isolated_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Empty registry and cache, and a Hugging Face cache of our own for each test."""
    for name in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    tk.clear_tokenizer_cache()
    with tk._lock:
        tk._registered.clear()
    yield
    tk.clear_tokenizer_cache()
    with tk._lock:
        tk._registered.clear()


def byte_level_bpe(path: Path, *, with_config: bool = True) -> Path:
    """A small GPT-2 style byte-level BPE with BOS/EOS, saved as ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    if with_config:
        config = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}}
        (path.parent / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def metaspace_bpe(path: Path) -> Path:
    """A SentencePiece-style tokenizer: words carry a leading '▁' that decoding turns into spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def stream(tokenizer: tk.Tokenizer, ids: List[int]) -> List[str]:
    decoder = tokenizer.incremental_decoder()
    return [decoder.feed(token_id) for token_id in ids] + [decoder.flush()]


# ---------------------------------------------------------------- built-ins


def test_local_models_share_the_byte_tokenizer() -> None:
    byte = tk.get_tokenizer("tinkex/byte")
    for name in ("tinkex/ngram-small", "tinkex/echo", "tinkex/echo:v3", " tinkex/byte "):
        assert tk.get_tokenizer(name) is byte
    assert (byte.name, byte.bos_token_id, byte.eos_token_id) == ("tinkex/byte", 256, 257)
    assert byte.encode("añ") == [97, 195, 177]
    assert byte.decode([256, 97, 195, 177, 257]) == "añ"


@given(st.text(max_size=40))
@property_settings(200)
def test_byte_stream_joins_to_decode_without_broken_characters(text: str) -> None:
    byte = tk.get_tokenizer("tinkex/byte")
    try:
        ids = byte.encode(text)
    except ValidationError:  # lone surrogates cannot be UTF-8
        return
    pieces = stream(byte, ids)
    assert "".join(pieces) == text == byte.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces if "\ufffd" not in text)


# ---------------------------------------------------------------- tokenizer.json files


def test_tokenizer_json_by_file_and_directory_path(tmp_path: Path) -> None:
    path = byte_level_bpe(tmp_path / "tok" / "tokenizer.json")
    by_file = tk.get_tokenizer(str(path))
    by_dir = tk.get_tokenizer(str(path.parent))
    assert isinstance(by_file, tk.HuggingFaceTokenizer) and by_file.name == str(path)
    ids = by_dir.encode("the lazy fox")
    assert ids[0] == 0 and by_dir.bos_token_id == 0 and by_dir.eos_token_id == 1
    assert by_dir.decode(ids) == "the lazy fox"
    assert by_dir.decode([*ids, 1]) == "the lazy fox"  # specials skipped
    assert by_dir.encode("fox", add_special_tokens=False)[0] != 0


def test_special_ids_unknown_without_tokenizer_config(tmp_path: Path) -> None:
    tok = tk.get_tokenizer(str(byte_level_bpe(tmp_path / "bare" / "tokenizer.json", with_config=False)))
    assert tok.bos_token_id is None and tok.eos_token_id is None


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> tk.HuggingFaceTokenizer:
    return tk.HuggingFaceTokenizer.from_file(str(byte_level_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json")))


@given(st.text(max_size=30))
@property_settings(150)
def test_bpe_stream_joins_to_decode_without_broken_characters(bpe: tk.HuggingFaceTokenizer, text: str) -> None:
    try:
        ids = bpe.encode(text, add_special_tokens=False)
    except ValidationError:
        return
    whole = bpe.decode(ids)
    pieces = stream(bpe, ids)
    assert "".join(pieces) == whole
    if "\ufffd" not in whole:
        assert not any("\ufffd" in piece for piece in pieces)


def test_multibyte_characters_split_across_tokens_are_held_back(bpe: tk.HuggingFaceTokenizer) -> None:
    ids = bpe.encode("🙂🙃", add_special_tokens=False)  # 🙃 is not in the corpus: split into byte tokens
    pieces = stream(bpe, ids)
    assert len(ids) > 2 and "".join(pieces) == "🙂🙃"
    assert [piece for piece in pieces if piece] == ["🙂", "🙃"]


def test_a_file_tokenizer_describes_itself_and_encodes_only_text(bpe: tk.HuggingFaceTokenizer) -> None:
    assert bpe.vocab_size == bpe.backend.get_vocab_size() > 256
    assert repr(bpe) == f"<HuggingFaceTokenizer {bpe.name!r} vocab={bpe.vocab_size}>"
    with pytest.raises(ValidationError, match="text must be a str") as caught:
        bpe.encode(b"over")  # type: ignore[arg-type]
    assert caught.value.field == "text"


def test_metaspace_leading_spaces_join_exactly(tmp_path: Path) -> None:
    tok = tk.get_tokenizer(str(metaspace_bpe(tmp_path / "sp" / "tokenizer.json")))
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not pieces[0].startswith(" ") and any(piece.startswith(" ") for piece in pieces[1:])


def test_missing_tokenizers_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = byte_level_bpe(tmp_path / "tokenizer.json")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ValidationError, match=r"pip install 'tinkex\[tokenizers\]'"):
        tk.get_tokenizer(str(path))


def test_unreadable_tokenizer_json_is_a_validation_error(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(ValidationError, match="cannot load tokenizer") as caught:
        tk.get_tokenizer(str(broken))
    assert caught.value.field == "tokenizer"


# ---------------------------------------------------------------- lookup by model name


def hub_snapshot(hub: Path, repo: str, revision: str, *, main: bool) -> Path:
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    path = byte_level_bpe(repo_dir / "snapshots" / revision / "tokenizer.json")
    if main:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)
    return path


def test_model_found_in_the_hugging_face_cache(tmp_path: Path) -> None:
    hub = tmp_path / "hf-hub"
    hub_snapshot(hub, "acme/tiny-lm", "aaa111", main=False)
    main = hub_snapshot(hub, "acme/tiny-lm", "bbb222", main=True)
    os.utime(main, (1, 1))  # older than the other snapshot: refs/main still wins
    tok = tk.get_tokenizer("acme/tiny-lm:some-revision")
    assert tok.name == "acme/tiny-lm"
    assert isinstance(tok, tk.HuggingFaceTokenizer) and tok.decode(tok.encode("over the dog")) == "over the dog"


def test_a_main_ref_to_a_snapshot_without_the_file_falls_back_to_another_snapshot(tmp_path: Path) -> None:
    hub = tmp_path / "hf-hub"
    found = hub_snapshot(hub, "acme/partial", "aaa111", main=False)
    refs = hub / "models--acme--partial" / "refs"
    refs.mkdir()
    (refs / "main").write_text("bbb222")  # a revision whose download never included tokenizer.json
    tok = tk.get_tokenizer("acme/partial")
    assert isinstance(tok, tk.HuggingFaceTokenizer) and tok.decode(tok.encode("lazy dog")) == "lazy dog"
    assert tk._snapshot_file(str(hub / "models--acme--partial")) == str(found)


def test_hf_home_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    hub_snapshot(tmp_path / "home" / "hub", "acme/other", "c0ffee", main=False)
    assert tk.get_tokenizer("acme/other").name == "acme/other"


def test_llama3_models_use_the_shared_tokenizer_repo(tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hf-hub", "thinkingmachineslabinc/meta-llama-3-tokenizer", "d00d", main=True)
    assert tk.get_tokenizer("meta-llama/Llama-3.1-8B").name == "meta-llama/Llama-3.1-8B"


def test_search_path_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    byte_level_bpe(tmp_path / "second" / "acme" / "mirror" / "tokenizer.json")
    monkeypatch.setenv(tk.TOKENIZER_PATH_ENV, os.pathsep.join([str(tmp_path / "first"), str(tmp_path / "second")]))
    assert tk.get_tokenizer("acme/mirror").name == "acme/mirror"


def test_unknown_model_error_names_the_model_and_both_remedies() -> None:
    with pytest.raises(tk.TokenizerNotFoundError) as caught:
        tk.get_tokenizer("acme/missing:rev")
    error = caught.value
    assert isinstance(error, ValidationError) and error.model == "acme/missing:rev" and error.field == "model"
    message = str(error)
    assert "'acme/missing:rev'" in message and "register_tokenizer" in message
    assert tk.TOKENIZER_PATH_ENV in message and "Hugging Face cache" in message
    assert "`hf download acme/missing tokenizer.json`" in message and "huggingface-cli" not in message


@pytest.mark.parametrize("relative", ["gone/tokenizer.json", "gone/tok.JSON", "dir-without-file"])
def test_a_path_that_holds_no_tokenizer_says_so(tmp_path: Path, relative: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dir-without-file").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in (str(tmp_path / relative), "./" + relative):
        with pytest.raises(tk.TokenizerNotFoundError) as caught:
            tk.get_tokenizer(name)
        message = str(caught.value)
        expected = "no tokenizer.json in directory" if relative == "dir-without-file" else "tokenizer file not found:"
        assert message.startswith(expected) and caught.value.path is not None and relative in message
        assert "download" not in message and caught.value.model == name


def test_a_home_relative_path_is_expanded_in_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(tk.TokenizerNotFoundError, match="tokenizer file not found") as caught:
        tk.get_tokenizer("~/missing/tokenizer.json")
    assert caught.value.path == str(tmp_path / "missing" / "tokenizer.json")


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_empty_names_are_rejected(name: object) -> None:
    with pytest.raises(ValidationError, match="model name"):
        tk.get_tokenizer(name)  # type: ignore[arg-type]


# ---------------------------------------------------------------- registration and the cache


def test_register_a_path_and_an_object(tmp_path: Path) -> None:
    path = byte_level_bpe(tmp_path / "reg" / "tokenizer.json")
    tk.register_tokenizer("acme/registered", str(path.parent))
    loaded = tk.get_tokenizer("acme/registered:rev")
    assert isinstance(loaded, tk.HuggingFaceTokenizer) and loaded.name == "acme/registered"
    byte = tk.get_tokenizer("tinkex/byte")
    tk.register_tokenizer("tinkex/echo", byte)
    assert tk.get_tokenizer("tinkex/echo") is byte
    tk.unregister_tokenizer("acme/registered")
    with pytest.raises(tk.TokenizerNotFoundError):
        tk.get_tokenizer("acme/registered")


def test_a_registered_file_removed_later_is_not_found(tmp_path: Path) -> None:
    path = byte_level_bpe(tmp_path / "reg" / "tokenizer.json")
    tk.register_tokenizer("acme/moved", path)
    path.unlink()
    with pytest.raises(tk.TokenizerNotFoundError, match="the registered path") as caught:
        tk.get_tokenizer("acme/moved")
    assert str(path) in str(caught.value)


def test_registering_a_missing_path_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no tokenizer.json") as caught:
        tk.register_tokenizer("acme/x", tmp_path / "nowhere")
    assert caught.value.field == "source"


def test_registration_replaces_a_cached_tokenizer(tmp_path: Path) -> None:
    first = tk.get_tokenizer("tinkex/echo")
    tk.register_tokenizer("tinkex/echo", byte_level_bpe(tmp_path / "tokenizer.json"))
    assert tk.get_tokenizer("tinkex/echo") is not first


def test_concurrent_first_loads_of_one_name_load_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = byte_level_bpe(tmp_path / "tokenizer.json")
    loads: List[str] = []
    original: Callable[..., tk.HuggingFaceTokenizer] = tk.HuggingFaceTokenizer.from_file

    def slow_load(file: str, *, name: object = None) -> tk.HuggingFaceTokenizer:
        loads.append(file)
        time.sleep(0.05)  # widens the window in which a second loader could start
        return original(file, name=name)

    monkeypatch.setattr(tk.HuggingFaceTokenizer, "from_file", staticmethod(slow_load))
    results: List[object] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        results.append(tk.get_tokenizer(str(path)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(results) == 8 and all(result is results[0] for result in results)
    assert not tk._loading


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    paths = [byte_level_bpe(tmp_path / str(i) / "tokenizer.json", with_config=False) for i in range(tk.CACHE_SIZE + 3)]
    for path in paths:
        tk.get_tokenizer(str(path))
    assert len(tk._cache) == tk.CACHE_SIZE
    assert str(paths[-1]) in tk._cache and str(paths[0]) not in tk._cache


def test_a_failed_load_is_not_cached_and_can_succeed_later(tmp_path: Path) -> None:
    with pytest.raises(tk.TokenizerNotFoundError):
        tk.get_tokenizer("acme/later")
    hub_snapshot(tmp_path / "hf-hub", "acme/later", "e1", main=True)
    assert tk.get_tokenizer("acme/later").name == "acme/later"


def test_importing_tinkex_does_not_import_tokenizers() -> None:
    code = "import sys, tinkex, tinkex.tokenizers; print('tokenizers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- text helpers on the value types


def test_model_input_from_text() -> None:
    assert ModelInput.from_text("Hi", model_name="tinkex/ngram-small").to_ints() == [72, 105]
    assert ModelInput.from_text("é", tokenizer=tk.get_tokenizer("tinkex/byte")).to_ints() == [195, 169]
    with pytest.raises(ValidationError, match="model_name is required") as caught:
        ModelInput.from_text("Hi")
    assert caught.value.field == "model_name"
    with pytest.raises(ValidationError) as not_text:
        ModelInput.from_text(b"Hi", model_name="tinkex/byte")  # type: ignore[arg-type]
    assert not_text.value.field == "text"
    with pytest.raises(tk.TokenizerNotFoundError):
        ModelInput.from_text("Hi", model_name="acme/unknown")


def test_sequences_and_responses_decode() -> None:
    byte = tk.get_tokenizer("tinkex/byte")
    response = SampleResponse(sequences=[SampledSequence(tokens=[104, 105, 257]), SampledSequence(tokens=[])])
    assert response.sequences[0].decode(byte) == "hi"
    assert response.texts("tinkex/echo") == ["hi", ""]
