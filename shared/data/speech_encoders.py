"""HuBERT / wav2vec 2.0 speech encoders from the files users have, built as torchaudio models (no fairseq or
transformers needed, nothing downloaded):

- a torchaudio state dict (`torch.save(model.state_dict())`, optionally under "state_dict");
- a fairseq checkpoint (`hubert_base_ls960.pt`, `wav2vec_small.pt`, fine-tuned `*_ctc` ones): the `Trainer` state
  {"args" | "cfg", "model", "task_state", ...} (fairseq/trainer.py:401-441), its architecture read from
  `cfg["model"]` (or the old `args`), its keys renamed by torchaudio's own converter
  (`torchaudio.models.wav2vec2.utils.import_fairseq`); fairseq's pickled objects (its `Dictionary`, an
  `argparse.Namespace`) are let in as inert attribute bags, nothing else (torch's weights-only unpickler);
- a Hugging Face folder (`config.json` + `model.safetensors` or `pytorch_model.bin`, sharded or not), as
  `HubertModel` / `Wav2Vec2Model` / `*ForCTC` / `Wav2Vec2ForPreTraining` save it, its architecture from config.json.

The checkpoint's own architecture must be the one named (`hubert-base`, `wav2vec2-large`, ...): a checkpoint of
another size or kind is refused by name, and weights load strictly (no key left over, none missing). The models
with a layer-normalised conv front-end (hubert-large/xlarge, wav2vec2-large-lv60k) take a normalised waveform, as
torchaudio's bundles (pipelines/_wav2vec2/utils.py:35-53) and fairseq (`task.normalize`) give them."""

from __future__ import annotations

import ast
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import UserError
from .safe_pickle import safe_torch_load

BASE = dict(extractor_conv_layer_config=None, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=128,
            encoder_pos_conv_groups=16, encoder_attention_dropout=0.0, encoder_ff_interm_dropout=0.0,
            encoder_dropout=0.0, encoder_layer_drop=0.0, aux_num_out=None)
SHAPE_FIELDS = ("extractor_mode", "extractor_conv_bias", "encoder_embed_dim", "encoder_num_layers",
                "encoder_ff_interm_features", "encoder_layer_norm_first")


def _arch(mode, bias, dim, layers, heads, ffn, pre_ln):
    return dict(extractor_mode=mode, extractor_conv_bias=bias, encoder_embed_dim=dim, encoder_num_layers=layers,
                encoder_num_heads=heads, encoder_ff_interm_features=ffn, encoder_layer_norm_first=pre_ln)


ARCHS = {  # torchaudio.models' builders (models/wav2vec2/model.py)
    "hubert-base": _arch("group_norm", False, 768, 12, 12, 3072, False),
    "hubert-large": _arch("layer_norm", False, 1024, 24, 16, 4096, True),
    "hubert-xlarge": _arch("layer_norm", False, 1280, 48, 16, 5120, True),
    "wav2vec2-base": _arch("group_norm", False, 768, 12, 12, 3072, False),
    "wav2vec2-large": _arch("group_norm", False, 1024, 24, 16, 4096, False),
    "wav2vec2-large-lv60k": _arch("layer_norm", True, 1024, 24, 16, 4096, True),
}


class EncoderError(UserError, ValueError):
    """A speech-encoder checkpoint that cannot be used as named; the message names the file and why."""


@dataclass
class Checkpoint:
    """A checkpoint read: its architecture (wav2vec2_model's arguments), torchaudio-named weights, the model family
    its config names ('hubert' / 'wav2vec2', None for a bare state dict) and its format."""

    config: dict
    state: dict
    family: str | None
    form: str


# --------------------------------------------------------------------------------------------- reading files


def _torch_load(path: Path):
    """`safe_torch_load` with fairseq's own classes let in as inert objects; EncoderError names what it refused."""
    try:
        return safe_torch_load(path, inert=("fairseq.",))
    except pickle.UnpicklingError as e:
        raise EncoderError(f"{path}: cannot load safely ({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # noqa: BLE001  (not a torch file: torch raises several kinds)
        raise EncoderError(f"{path}: not a torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def _conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string ("[(512, 10, 5)] + [(512, 3, 2)] * 4 + ...", which fairseq eval()s)
    evaluated with lists, tuples, integers, + and * only."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            return (list if isinstance(node, ast.List) else tuple)(ev(e) for e in node.elts)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported expression in conv_feature_layers: {ast.dump(node)[:60]}")
    return [tuple(x) for x in ev(ast.parse(spec, mode="eval"))]


FAIRSEQ_DEFAULTS = dict(extractor_mode="default", encoder_layers=12, encoder_embed_dim=768,
                        encoder_ffn_embed_dim=3072, encoder_attention_heads=12, layer_norm_first=False,
                        conv_bias=False, conv_pos=128, conv_pos_groups=16,
                        conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2")
"""fairseq's dataclass defaults (fairseq/models/hubert/hubert.py:37-197), for fields an old config leaves out."""


def _fairseq(path: Path, ck: dict) -> Checkpoint:
    from torchaudio.models.wav2vec2.utils import import_fairseq

    model = ck["cfg"]["model"] if ck.get("cfg") else vars(ck["args"])
    state = dict(ck["model"])
    if "w2v_args" in model or str(model.get("_name", "")).endswith("_ctc"):  # fine-tuned: the encoder inside
        inner = model.get("w2v_args") or {}
        model = inner.get("model", inner) if isinstance(inner, dict) else vars(inner)
        state = {k.removeprefix("w2v_encoder."): v for k, v in state.items() if not k.startswith("w2v_encoder.proj")}
    m = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in model.items() if v is not None}}
    if m.get("conv_pos_batch_norm") or int(m.get("pos_conv_depth", 1)) > 1:
        raise EncoderError(f"{path}: a positional convolution torchaudio's models do not have")
    config = dict(BASE, extractor_mode={"default": "group_norm", "layer_norm": "layer_norm"}[m["extractor_mode"]],
                  extractor_conv_layer_config=_conv_layers(m["conv_feature_layers"]),
                  extractor_conv_bias=m["conv_bias"],
                  encoder_embed_dim=m["encoder_embed_dim"], encoder_pos_conv_kernel=m["conv_pos"],
                  encoder_pos_conv_groups=m["conv_pos_groups"], encoder_num_layers=m["encoder_layers"],
                  encoder_num_heads=m["encoder_attention_heads"], encoder_ff_interm_features=m["encoder_ffn_embed_dim"],
                  encoder_layer_norm_first=m["layer_norm_first"])
    try:
        state = import_fairseq._convert_state_dict(state)
    except ValueError as e:
        raise EncoderError(f"{path}: a key torchaudio's fairseq converter does not know ({e})") from e
    state.pop("label_embs_concat", None)  # HuBERT's cluster embeddings: pre-training only, kept by fine-tuned files
    name = str(model.get("_name", ""))
    return Checkpoint(config, state, "hubert" if "hubert" in name else "wav2vec2" if "wav2vec" in name else None,
                      "fairseq")


HF_DROP = re.compile(r"^(masked_spec_embed|quantizer\.|project_hid\.|project_q\.|lm_head\.|dropout_features"
                     r"|adapter\.)")


HF_FIELDS = ("feat_extract_norm", "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "hidden_size",
             "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "do_stable_layer_norm")
"""What `_huggingface` reads of a HubertConfig / Wav2Vec2Config (torchaudio's import_huggingface._get_config reads
the same)."""


def _huggingface(folder: Path) -> Checkpoint:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"{folder / 'config.json'}: unreadable ({e})") from None
    if cfg.get("model_type") not in ("hubert", "wav2vec2"):
        raise EncoderError(f"{folder / 'config.json'}: model_type {cfg.get('model_type')!r}, not hubert or wav2vec2")
    missing = [f for f in HF_FIELDS if f not in cfg]
    if missing:
        raise EncoderError(f"{folder / 'config.json'}: no {missing}")
    c = SimpleNamespace(**cfg)
    if not cfg.get("feat_proj_layer_norm", True):
        raise EncoderError(f"{folder}: feat_proj_layer_norm=false has no torchaudio equivalent")
    config = dict(BASE, extractor_mode=f"{c.feat_extract_norm}_norm",
                  extractor_conv_layer_config=list(zip(c.conv_dim, c.conv_kernel, c.conv_stride)),
                  extractor_conv_bias=c.conv_bias, encoder_embed_dim=c.hidden_size,
                  encoder_pos_conv_kernel=c.num_conv_pos_embeddings,
                  encoder_pos_conv_groups=c.num_conv_pos_embedding_groups, encoder_num_layers=c.num_hidden_layers,
                  encoder_num_heads=c.num_attention_heads, encoder_ff_interm_features=c.intermediate_size,
                  encoder_layer_norm_first=c.do_stable_layer_norm)
    state = {}
    for k, v in _hf_weights(folder).items():
        k = re.sub(r"^(hubert|wav2vec2)\.", "", k)
        if HF_DROP.match(k):
            continue
        k = re.sub(r"^feature_projection\.", "encoder.feature_projection.", k)
        state[re.sub(r"^encoder\.(?!feature_projection)", "encoder.transformer.", k)] = v
    return Checkpoint(config, state, cfg.get("model_type"), "huggingface")


def _hf_weights(folder: Path) -> dict:
    index = next((folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (folder / n).exists()), None)
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index else \
        [n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()][:1]
    if not files:
        raise EncoderError(f"{folder}: config.json but no model.safetensors or pytorch_model.bin")
    out = {}
    for name in files:
        if name.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise EncoderError(f"{folder / name}: reading safetensors needs `pip install safetensors`") from e
            out.update(load_file(folder / name))
        else:
            out.update(_torch_load(folder / name))
    return out


def _torchaudio(state: dict) -> Checkpoint:
    """A bare torchaudio state dict: its shape read from its keys (every released checkpoint with a
    layer-normalised front-end is pre-LN, the only reading the keys leave)."""
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k))}
    try:
        dim = state["encoder.feature_projection.projection.weight"].shape[0]
        ffn = state["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape[0]
    except KeyError as e:
        raise EncoderError(f"not a HuBERT / wav2vec 2.0 state dict (no {e})") from None
    mode = "layer_norm" if "feature_extractor.conv_layers.1.layer_norm.weight" in state else "group_norm"
    convs = [state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape for i in range(7)
             if f"feature_extractor.conv_layers.{i}.conv.weight" in state]
    pos = state.get("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
                    state.get("encoder.transformer.pos_conv_embed.conv.weight_v"))
    config = dict(BASE, extractor_mode=mode, extractor_conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
                  # the strides every released model has (5, then 2): the shapes hold the widths and kernels only
                  extractor_conv_layer_config=[(s[0], s[2], 5 if i == 0 else 2) for i, s in enumerate(convs)],
                  encoder_pos_conv_kernel=pos.shape[2] if pos is not None else 128,
                  encoder_pos_conv_groups=dim // pos.shape[1] if pos is not None else 16,
                  encoder_embed_dim=dim, encoder_num_layers=len(layers), encoder_ff_interm_features=ffn,
                  encoder_layer_norm_first=mode == "layer_norm", encoder_num_heads=None)
    return Checkpoint(config, state, None, "torchaudio")


def read(path: str | Path) -> Checkpoint:
    """Any of the three forms (module docstring) -> a `Checkpoint`; EncoderError names the file and the problem."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise EncoderError(f"{p}: a folder without config.json (a Hugging Face model folder has one)")
        return _huggingface(p)
    if not p.is_file():
        raise EncoderError(f"{p}: not found (give a local checkpoint file or Hugging Face folder)")
    ck = _torch_load(p)
    if isinstance(ck, dict) and "model" in ck and ("cfg" in ck or "args" in ck):
        return _fairseq(p, ck)
    if isinstance(ck, dict):
        try:
            return _torchaudio(dict(ck.get("state_dict", ck)))
        except EncoderError as e:
            raise EncoderError(f"{p}: {e}") from None
    raise EncoderError(f"{p}: holds a {type(ck).__name__}, not a state dict or a fairseq checkpoint")


# ---------------------------------------------------------------------------------------------- building


def named(config: dict) -> str:
    """The architecture a config is ('hubert-large', ...; 'wav2vec2-base' and 'hubert-base' share one), or a
    description of its shape when it is none of them."""
    found = [n for n, a in ARCHS.items() if all(config[f] == a[f] for f in SHAPE_FIELDS)]
    if found:
        return " / ".join(found)
    return f"{config['encoder_embed_dim']}-dim {config['encoder_num_layers']}-layer {config['extractor_mode']} model"


def check(arch: str, ck: Checkpoint, path) -> dict:
    """The checkpoint's config when it is `arch` (heads filled in for a bare state dict); refused by name else."""
    if arch not in ARCHS:
        raise EncoderError(f"unknown speech encoder {arch!r}; known: {sorted(ARCHS)}")
    want = ARCHS[arch]
    if any(ck.config[f] != want[f] for f in SHAPE_FIELDS):
        raise EncoderError(f"{path}: a {named(ck.config)} checkpoint ({ck.form}), not {arch}")
    if ck.family is not None and not arch.startswith(ck.family):
        raise EncoderError(f"{path}: its config names a {ck.family} model, not {arch}")
    return {**ck.config, "encoder_num_heads": ck.config["encoder_num_heads"] or want["encoder_num_heads"]}


def build(arch: str, path: str | Path) -> tuple[torch.nn.Module, dict]:
    """The torchaudio model of `path`, checked to be `arch` (refused by name otherwise), weights loaded strictly;
    returns (model in eval mode, its wav2vec2_model config)."""
    from torchaudio.models import wav2vec2_model

    ck = read(path)
    config = check(arch, ck, path)
    model = wav2vec2_model(**config)
    try:
        model.load_state_dict(ck.state, strict=True)
    except RuntimeError as e:
        raise EncoderError(f"{path}: weights do not fit {arch} ({str(e).splitlines()[1].strip()[:300]})") from None
    return model.eval(), config
