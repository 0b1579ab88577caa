"""VQGAN stage 2: the GPT prior learns the code grids of a trained VQGAN, and KV-cache
sampling reproduces full recomputation token for token."""
import pytest
import torch

from fastgen import train
from fastgen.models.gpt_prior import draw, filter_logits

COMMON = dict(data_options={"size": 16}, batch=32, seed=0, progress=False, plot_every=0)
GPT = {"n_layer": 2, "n_head": 2, "n_embd": 64}


@pytest.fixture(scope="module")
def vqgan_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqgan")
    train.train("vqgan", "shapes", steps=100, out=str(out), model_options={"ch": 16, "disc_ndf": 16,
                                                                           "disc_start": 10**9}, **COMMON)
    return str(out / "checkpoint.pt")


def test_prior_beats_the_untrained_and_unigram_baselines(vqgan_ckpt, tmp_path):
    opts = {**GPT, "vqgan": vqgan_ckpt}
    untrained = train.train("gpt_prior", "shapes", steps=0, out=str(tmp_path / "u"), model_options=opts,
                            **COMMON)["eval"]
    trained = train.train("gpt_prior", "shapes", steps=120, lr=3e-3, out=str(tmp_path / "t"),
                          model_options=opts, **COMMON)["eval"]
    assert untrained["bits_per_token"] > 0.9 * trained["uniform_bits_per_token"], untrained
    # context helps: below the unigram entropy of the held-out codes, far below untrained
    assert trained["bits_per_token"] < trained["unigram_bits_per_token"], trained
    assert trained["bits_per_token"] < 0.7 * untrained["bits_per_token"], (trained, untrained)
    _, images = train.sample("gpt_prior", str(tmp_path / "t" / "checkpoint.pt"), n=4, out=str(tmp_path / "s.png"))
    assert images.shape == (4, 3, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_kv_cache_sampling_equals_full_recomputation(vqgan_ckpt):
    from fastgen.models import DataSpec, get_model

    torch.manual_seed(0)
    model = get_model("gpt_prior")(DataSpec("shapes", "image", (3, 16, 16), 4), vqgan=vqgan_ckpt, **GPT).eval()
    for opts in ({}, {"temperature": 0.7, "top_k": 20}, {"top_p": 0.9}):
        a = model.sample_codes(6, torch.Generator().manual_seed(3), use_cache=True, **opts)
        b = model.sample_codes(6, torch.Generator().manual_seed(3), use_cache=False, **opts)
        assert torch.equal(a, b), opts
        assert a.shape == (6, 16) and int(a.max()) < model.n_codes


def test_filter_logits_top_k_top_p():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    p = logits.softmax(-1)[0]  # 0.644, 0.087, 0.237, 0.032
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, False, True, False]]   # 0.644 < 0.7, then 0.644 + 0.237 >= 0.7
    assert float(p[0]) < 0.7
    u = torch.tensor([0.0, 0.999999])
    assert draw(torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])), u).tolist() == [0, 1]


def test_needs_a_vqgan_checkpoint():
    from fastgen.models import DataSpec, get_model

    with pytest.raises(ValueError, match="gpt_prior needs a trained VQGAN"):
        get_model("gpt_prior")(DataSpec("shapes", "image", (3, 16, 16), 4))


def test_generate_with_a_prompt_cache_equals_recompute():
    from fastgen.models.gpt_prior import GPT

    torch.manual_seed(0)
    gpt = GPT(vocab=20, n_out=16, block_size=24, n_layer=2, n_head=2, n_embd=32).eval()
    prompt = torch.randint(0, 16, (3, 5))
    u = torch.rand(3, 19, generator=torch.Generator().manual_seed(1))
    a = gpt.generate(prompt, 19, u, use_cache=True, top_k=8)
    b = gpt.generate(prompt, 19, u, use_cache=False, top_k=8)
    assert torch.equal(a, b) and a.shape == (3, 19)
