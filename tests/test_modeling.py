"""The RecBase decoder: Hub-native save/load, generation with a cache, parity with Qwen2, bad input."""

import ast
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from benchmarks.bench_model import qwen2_twin
from modeling_recbase import RecBaseConfig, RecBaseForCausalLM, RecBaseItemConstraint, RecBaseModel
from tests.conftest import SHIPPED_FILES


def test_remote_code_round_trip_outside_repo(tiny_config, tmp_path, run_outside_repo):
    model = RecBaseForCausalLM(tiny_config).eval()
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    saved = {p.name for p in checkpoint.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "configuration_recbase.py",
        "modeling_recbase.py",
    } <= saved
    input_ids = torch.randint(3, tiny_config.vocab_size, (2, 7))
    torch.save(input_ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = model(input_ids).logits
    torch.save(expected, tmp_path / "expected.pt")

    run_outside_repo(
        textwrap.dedent(f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        lm = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        # Loaded from the checkpoint's own files, not from the installed package.
        assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
        assert type(base).__name__ == "RecBaseModel", type(base)
        with torch.no_grad():
            assert torch.equal(lm(ids).logits, expected)
            assert torch.equal(lm.lm_head(base(ids).last_hidden_state), expected)
        print("ok")
    """)
    )


def test_installed_package_loads_without_remote_code(tiny_config, tmp_path):
    RecBaseForCausalLM(tiny_config).save_pretrained(tmp_path)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), RecBaseForCausalLM)
    assert isinstance(AutoModel.from_pretrained(tmp_path), RecBaseModel)


@pytest.mark.parametrize("path", [p for p in SHIPPED_FILES if p.exists()], ids=lambda p: p.name)
def test_shipped_file_imports_only_torch_transformers_stdlib_and_siblings(path):
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)
    assert set(get_imports(path)) <= allowed
    siblings = {p.stem for p in path.parent.glob("*.py")}
    assert set(get_relative_imports(path)) <= siblings
    # Relative imports must be flat ("from .sibling import x"): nested packages are not shipped.
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and node.module and "." not in node.module, ast.dump(node)


def test_generation_with_cache_equals_without_and_left_padding_is_neutral(tiny_config):
    model = RecBaseForCausalLM(tiny_config).eval()
    short = torch.randint(3, tiny_config.vocab_size, (1, 5))
    long = torch.randint(3, tiny_config.vocab_size, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = (torch.arange(9) >= torch.tensor([[4], [0]])).long()
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with_cache = model.generate(batch, attention_mask=mask, use_cache=True, **kwargs)
    without_cache = model.generate(batch, attention_mask=mask, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)
    alone = model.generate(short, use_cache=True, **kwargs)
    assert torch.equal(with_cache[0, 9:], alone[0, 5:])


@pytest.mark.parametrize("padded", [False, True])
def test_logits_match_transformers_qwen2(tiny_config, padded):
    ours = RecBaseForCausalLM(tiny_config).eval()
    qwen = qwen2_twin(tiny_config).eval()
    # The heads' extra parts start at zero (content inputs add nothing yet): the decoder alone is Qwen2's.
    extras = ("dense_proj", "popularity_bias", "code_latents", "content_proj")
    decoder = {name: value for name, value in ours.state_dict().items() if name.split(".")[-2] not in extras}
    qwen.load_state_dict(decoder, strict=True)
    input_ids = torch.randint(3, tiny_config.vocab_size, (2, 11))
    mask = torch.ones_like(input_ids)
    if padded:
        mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = qwen(input_ids, attention_mask=mask, position_ids=positions).logits
        actual = ours(input_ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], rtol=1e-5, atol=1e-5)


def test_paper_size_preset_has_1_5b_parameters_on_meta_device():
    with torch.device("meta"):
        model = RecBaseForCausalLM(RecBaseConfig.from_preset("recbase-1.5b"))
    assert 1.40e9 <= sum(p.numel() for p in model.parameters()) <= 1.60e9


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RecBaseConfig.from_preset("recbase-huge"), "unknown RecBase preset 'recbase-huge'"),
        (lambda: RecBaseConfig(hidden_size=100, num_attention_heads=3), "not divisible by num_attention_heads=3"),
        (lambda: RecBaseConfig(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads=3"),
        (lambda: RecBaseConfig(codebook_sizes=[8, 0]), "codebook_sizes"),
        (lambda: RecBaseConfig(codebook_sizes=[8], vocab_size=5), "vocab_size=5 is smaller"),
    ],
)
def test_bad_config_is_rejected_clearly(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("bad_id", [-1, 10_000])
def test_token_ids_outside_vocabulary_are_rejected(tiny_config, bad_id):
    model = RecBaseForCausalLM(tiny_config)
    with pytest.raises(ValueError, match=rf"\[{bad_id}\] are outside the vocabulary \[0, {tiny_config.vocab_size}\)"):
        model(torch.tensor([[3, bad_id]]))


def test_item_constraint_generates_only_real_distinct_items(tiny_config):
    model = RecBaseForCausalLM(tiny_config).eval()
    items = torch.tensor([[3, 11, 19, 27], [3, 11, 20, 27], [4, 12, 19, 28], [5, 13, 21, 27], [3, 12, 19, 27]])
    prompt = torch.randint(3, tiny_config.vocab_size, (1, 8))
    constraint = RecBaseItemConstraint(items, prompt_length=8, eos_token_id=tiny_config.eos_token_id)
    out = model.generate(
        prompt,
        max_new_tokens=4,
        num_beams=5,
        num_return_sequences=5,
        do_sample=False,
        logits_processor=[constraint],
        pad_token_id=0,
    )
    generated = {tuple(row) for row in out[:, 8:].tolist()}
    assert generated == {tuple(row) for row in items.tolist()}
