"""Special token ids, add_*_token flags and the chat template, as gguf-py's SpecialVocab finds them.

Sources, in SpecialVocab._load's order: tokenizer.json (added tokens, and the post-processor, whose
TemplateProcessing says whether BOS/EOS are added), tokenizer_config.json (`{typ}_token` contents looked up
among tokenizer.json's added tokens, `add_{typ}_token`, `chat_template`, else chat_template.jinja/.json),
then config.json's `{typ}_token_id`. The first source to set a value wins; keys are written in the order
they were first set (SpecialVocab.add_to_gguf). llama.cpp's quirks are kept on purpose, e.g. an
`eos_token` given as an AddedToken dict never equals the template's last token, so that token becomes EOS
and the dict's content is also written as the EOT token.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.gguf.constants import GGUFValueType as VT, Keys

K = Keys.Tokenizer
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# SpecialVocab writes these via GGUFWriter.add_{typ}_token_id; types without such a method (cls) are
# dropped.
SPECIAL_ID_KEYS = {"bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "pad": K.PAD_ID, "eot": K.EOT_ID,
                   "sep": K.SEP_ID, "mask": K.MASK_ID, "eom": K.EOM_ID}
ADD_KEYS = {"bos": K.ADD_BOS, "eos": K.ADD_EOS, "sep": K.ADD_SEP}
NORMALIZER_KEYS = {"lowercase": K.NORMALIZER_LOWERCASE, "strip_accents": K.NORMALIZER_STRIP_ACCENTS}


class SpecialVocabError(ValueError):
    """A special token id that cannot be right (negative)."""


def _load(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SpecialVocabError(f"{path}: invalid JSON ({e})") from None


def _template_flags(proc: dict, tc: dict | None, types: list[str], add: dict[str, bool]) -> None:
    """Crude reading of a TemplateProcessing: leading/trailing special tokens of the single template
    (and the separator of the pair template). Mutates `tc` like SpecialVocab does."""
    special = lambda item: item.get("SpecialToken", {}).get("id")  # noqa: E731
    bos, cls = (tc or {}).get("bos_token"), (tc or {}).get("cls_token")
    eos, sep = (tc or {}).get("eos_token"), (tc or {}).get("sep_token")
    single, pair = proc.get("single", []), proc.get("pair", [])
    first = last = None
    if len(single) > 1:
        if first := special(single[0]):
            if tc and first not in (bos, cls):
                if not bos:
                    tc["bos_token"] = bos = first
                if not cls:
                    tc["cls_token"] = cls = first
            if not tc:
                bos = first
            add["bos"] = first in (bos, cls)
        if last := special(single[-1]):
            if tc and last != eos:
                if "eot" not in types:
                    types.append("eot")
                    tc["eot_token"] = eos
                elif "eom" not in types:
                    types.append("eom")
                    tc["eom_token"] = eos
                tc["eos_token"] = eos = last
            if not tc:
                eos = last
            add["eos"] = last == eos
    if not pair:
        return
    start = 1 if first and special(pair[0]) == first else 0
    stop = -1 if last and special(pair[-1]) == last else None
    pair = pair[start:stop]
    if not pair:
        return
    a, b = pair[0].get("Sequence", {}).get("id"), pair[-1].get("Sequence", {}).get("id")
    middle = pair[1:-1]
    if a != "A" or b != "B" or not middle:
        return
    add_sep = False
    if (entry := special(middle[0])) and entry in (sep, eos) and not last:
        add_sep = True
    if len(middle) == 2 and (entry := special(middle[1])) and entry in (sep, eos):
        add_sep = True
    add["sep"] = add_sep
    if add_sep and not sep and tc:
        tc["sep_token"] = eos


def _normalizer_flags(node: dict, flags: dict[str, bool]) -> None:
    """Lowercase / StripAccents of a tokenizer.json normalizer (SpecialVocab._parse_normalizer)."""
    kind = node.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for k in ("lowercase", "strip_accents"):
            if k in node:
                flags[k] = node[k]
    elif kind == "Sequence":
        for sub in node.get("normalizers", []):
            _normalizer_flags(sub, flags)


def special_metadata(model_dir: Path, n_vocab: int | None, types=SPECIAL_TYPES,
                     defaults: dict[str, int] | None = None) -> list[tuple[str, Any, Any]]:
    """(key, value, type) of the special ids, add flags and chat template, in SpecialVocab's order.
    `defaults` are ids set after loading, kept only where the files gave none (_set_special_token)."""
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    types = list(types)

    def set_id(typ: str, tid: Any) -> None:  # SpecialVocab._set_special_token
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise SpecialVocabError(f"{model_dir}: invalid value for special token type {typ}: {tid}")
        if (n_vocab is None or tid < n_vocab) and typ not in ids:
            ids[typ] = tid

    tj = _load(model_dir / "tokenizer.json")
    tc = _load(model_dir / "tokenizer_config.json")
    added_tokens = (tj or {}).get("added_tokens", []) if tj else []
    normalizer: dict[str, bool] = {}
    if tj:
        if tj.get("normalizer"):
            _normalizer_flags(tj["normalizer"], normalizer)
        if tc and not tc.get("bos_token") and tc.get("cls_token"):
            tc["bos_token"] = tc["cls_token"]
        if tc and not tc.get("eos_token") and tc.get("sep_token"):
            tc["eos_token"] = tc["sep_token"]
        post = tj.get("post_processor") or {}
        for proc in post.get("processors", [post]) if post else []:
            kind = proc.get("type")
            if kind == "ByteLevel":
                add.setdefault("bos", False)
                add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                add.update(bos=True, eos=True, sep=True)
                if tc and not tc.get("cls_token"):
                    tc["cls_token"] = proc.get("cls", [tc.get("bos_token")])[0]
                if tc and not tc.get("sep_token"):
                    tc["sep_token"] = proc.get("sep", [tc.get("eos_token")])[0]
            elif kind == "TemplateProcessing":
                _template_flags(proc, tc, types, add)
    template = None
    if tc:
        jinja, cjson = model_dir / "chat_template.jinja", model_dir / "chat_template.json"
        alt = jinja.read_text(encoding="utf-8") if jinja.is_file() else \
            (_load(cjson) or {}).get("chat_template") if cjson.is_file() else None
        template = tc.get("chat_template", alt)
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in add:
                add[typ] = flag
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                set_id(typ, next((a.get("id") for a in added_tokens if a.get("content") == content), None))
    config = _load(model_dir / "config.json") or {}
    for typ in types:
        tid = config.get(f"{typ}_token_id")
        if tid is None and "text_config" in config:
            tid = config["text_config"].get(f"{typ}_token_id")
        set_id(typ, tid)
    for typ, tid in (defaults or {}).items():
        set_id(typ, tid)
    out: list[tuple[str, Any, Any]] = [(SPECIAL_ID_KEYS[t], v, VT.UINT32) for t, v in ids.items()
                                       if t in SPECIAL_ID_KEYS]
    out += [(ADD_KEYS[t], v, VT.BOOL) for t, v in add.items() if t in ADD_KEYS]
    if isinstance(template, str):
        out.append((K.CHAT_TEMPLATE, template, VT.STRING))
    elif isinstance(template, list):
        out += _named_templates(template)
    for k in ("lowercase", "strip_accents"):  # add_to_gguf writes lowercase first
        if normalizer.get(k) is not None:
            out.append((NORMALIZER_KEYS[k], bool(normalizer[k]), VT.BOOL))
    return out


def _named_templates(choices: list) -> list[tuple[str, Any, Any]]:
    """A list of {name, template}: 'default' is the chat template, the others tokenizer.chat_template.<name>
    plus the list of their names (GGUFWriter.add_chat_template)."""
    out, names, default = [], [], None
    for choice in choices:
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
        text = choice.get("template")
        if name and text is not None:
            if name == "default":
                default = text
            else:
                names.append(name)
                out.append((f"{K.CHAT_TEMPLATE}.{name}", text, VT.STRING))
    if names:
        out.append((K.CHAT_TEMPLATES, names, (VT.ARRAY, VT.STRING)))
    if default is not None:
        out.append((K.CHAT_TEMPLATE, default, VT.STRING))
    return out
