"""general.* metadata of a converted model, from the same heuristics as gguf-py's `Metadata.load`.

Sources, in llama.cpp's order of precedence: README.md YAML front matter (the model card), config.json's
`_name_or_path`, then the folder name; recommended sampling settings from generation_config.json. The
folder-name heuristic is what names the toys: "tiny-llama" -> general.name "Tiny Llama".
The size label ("4.2M", "4x4.2M") is computed from the converted tensors (gguf.utility.size_label).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from workbench.gguf.constants import GGUFValueType as VT, Keys

G = Keys.General
_G = G.PREFIX  # "general." + a model-card field name is its GGUF key
# (generation_config.json key(s), GGUF key, type), in Metadata.set_gguf_meta_model's order.
SAMPLING = [
    (("sequence",), G.SAMPLING_SEQUENCE, VT.STRING), (("top_k",), G.SAMPLING_TOP_K, VT.INT32),
    (("top_p",), G.SAMPLING_TOP_P, VT.FLOAT32), (("min_p",), G.SAMPLING_MIN_P, VT.FLOAT32),
    (("xtc_probability",), G.SAMPLING_XTC_PROBABILITY, VT.FLOAT32),
    (("xtc_threshold",), G.SAMPLING_XTC_THRESHOLD, VT.FLOAT32), (("temperature",), G.SAMPLING_TEMP, VT.FLOAT32),
    (("penalty_last_n",), G.SAMPLING_PENALTY_LAST_N, VT.INT32),
    (("penalty_repeat", "repetition_penalty"), G.SAMPLING_PENALTY_REPEAT, VT.FLOAT32),
    (("mirostat",), G.SAMPLING_MIROSTAT, VT.INT32), (("mirostat_tau",), G.SAMPLING_MIROSTAT_TAU, VT.FLOAT32),
    (("mirostat_eta",), G.SAMPLING_MIROSTAT_ETA, VT.FLOAT32),
]
# model-card fields in the order they are written after general.name
AUTHORSHIP = ["author", "version", "organization", "finetune", "basename", "description", "quantized_by",
              "size_label", "license", "license.name", "license.link", "url", "doi", "uuid", "repo_url",
              "source.url", "source.doi", "source.uuid", "source.repo_url"]
# model-card keys read into each field, first hit wins (apply_metadata_heuristic)
CARD_KEYS = {
    "name": ["name", "model_name"], "author": ["author", "model_author", "model_creator"],
    "version": ["version", "model_version"], "organization": ["organization", "model_organization"],
    "description": ["description", "model_description"], "finetune": ["finetune", "model_finetune"],
    "basename": ["basename", "model_basename", "model_type"], "size_label": ["size_label", "model_size_label"],
    "source.url": ["url", "model_url"], "source.doi": ["doi", "model_doi"], "source.uuid": ["uuid", "model_uuid"],
    "source.repo_url": ["repo_url", "model_repo_url"], "license": ["license"], "license.name": ["license_name"],
    "license.link": ["license_link"],
}
ENTRY_FIELDS = ["name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url"]


class ModelCardError(ValueError):
    """A model card (README.md) whose front matter cannot be read."""


def _json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def load_model_card(model_dir: Path) -> dict:
    """The YAML front matter of README.md ({} without one), with llama.cpp's two YAML fix-ups."""
    path = model_dir / "README.md"
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "---":
        return {}
    body = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    text = ("\n".join(body) + "\n").replace("- no\n", '- "no"\n').replace("\t", "  ")
    try:
        import yaml
    except ImportError:
        raise ModelCardError(f"{path}: reading its YAML front matter needs the pyyaml package") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ModelCardError(f"{path}: invalid YAML front matter ({e})") from None
    return data if isinstance(data, dict) else {}


def id_to_title(s: str) -> str:
    """'tiny-llama' -> 'Tiny Llama': title-case lower-case words except versions and numbers."""
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w
                    for w in s.strip().replace("-", " ").split())


def model_id_components(model_id: str | None, total_params: int = 0):
    """(full name, org, basename, finetune, version, size label) of 'org/Name-7B-Instruct-v0.2'
    (Metadata.get_model_id_components)."""
    if model_id is None:
        return (None,) * 6
    if " " in model_id:
        return (model_id,) + (None,) * 5
    org, full = model_id.split("/", 1) if "/" in model_id else (None, model_id)
    if org is not None and org[:1] == ".":
        org = None
    parts = [p for p in full.split("-") if p]
    kinds: list[set] = [set() for _ in parts]
    for i, part in enumerate(parts):
        if re.fullmatch(r"(v|iter)?\d+([.]\d+)*", part, re.IGNORECASE):
            kinds[i].add("version")
        elif re.fullmatch(r"i?q\d(_\w)*|b?fp?(16|32)", part, re.IGNORECASE):
            kinds[i].add("type")
            parts[i] = part.upper()
        elif i > 0 and re.fullmatch(r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)",
                                    part, re.IGNORECASE):
            part = part.replace("_", ".")
            if part[-1].isdecimal():  # bloom-7b1 -> 7.1B
                part = part[:-2] + "." + part[-1] + part[-2]
            if len(part) > 1 and part[-2].isdecimal() and part[-1] in "kmbt":
                part = part[:-1] + part[-1].upper()
            if total_params != 0:
                try:
                    label = float(part[:-1]) * pow(1000, " KMBT".find(part[-1]))
                    if (total_params < 0 and label < abs(total_params) // 8) or (
                            total_params > 0 and abs(label - total_params) > 7 * total_params // 8):
                        kinds[i].add("finetune")  # most likely a context length
                        part = part[:-1] + part[-1].lower()
                except ValueError:
                    pass
            if not kinds[i]:
                kinds[i].add("size_label")
            parts[i] = part
        elif i > 0 and re.fullmatch(r"chat|instruct|vision|lora", part, re.IGNORECASE):
            kinds[i].add("type" if total_params < 0 and part.lower() == "lora" else "finetune")
    if any(c.isdecimal() for p, k in zip(parts, kinds) if "size_label" in k for c in p):
        for p, k in zip(parts, kinds):
            if "size_label" in k and all(c.isalpha() for c in p):
                k.remove("size_label")
    at_start = True
    for p, k in zip(parts, kinds):
        if at_start and ((not k and p[0].isalpha()) or "version" in k):
            k.add("basename")
        else:
            at_start = False
            if not k:
                k.add("finetune")
    for p, k in zip(reversed(parts), reversed(kinds)):
        if "basename" in k and len(k) > 1:
            k.remove("basename")
        else:
            break
    basename = "-".join(p for p, k in zip(parts, kinds) if "basename" in k) or None
    size_label = "-".join(dict.fromkeys(p for p, k in zip(parts, kinds) if "size_label" in k)) or None
    finetune = "-".join(p for p, k in zip(parts, kinds) if "finetune" in k) or None
    version = "-".join(p for p, k in zip(parts, kinds) if "version" in k and "basename" not in k) or None
    if size_label is None and finetune is None and version is None:
        basename = None
    return full, org, basename, finetune, version, size_label


def _source_entry(model_id: Any, total_params: int) -> dict:
    """One base_model / dataset entry of the model card (a HF id, a URL or a dict)."""
    if isinstance(model_id, dict):
        return model_id
    if not isinstance(model_id, str):
        return {}
    entry: dict = {}
    hf_id = model_id
    if model_id.startswith(("http://", "https://", "ssh://")):
        entry["repo_url"] = model_id
        m = re.match(r"https?://huggingface.co/([^/]+/[^/]+)$", model_id) if "huggingface.co" in model_id else None
        if not m:
            return entry
        hf_id = m.group(1)
    full, org, _, _, version, _ = model_id_components(hf_id, total_params)
    if full is not None:
        entry["name"] = id_to_title(full)
    if org is not None:
        entry["organization"] = id_to_title(org)
    if version is not None:
        entry["version"] = version
    if hf_id is model_id and org is not None and full is not None:
        entry["repo_url"] = f"https://huggingface.co/{org}/{full}"
    return entry


def general_metadata(model_dir, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, Any, Any]]:
    """The general.* (key, value, type) triples Metadata.set_gguf_meta_model writes, in its order, for a
    model whose GGUF tensors have these numpy `shapes` (they give the parameter count and size label)."""
    model_dir = Path(model_dir)
    total_params, computed_label = parameter_count(shapes)
    card, hf, gen = load_model_card(model_dir), _json(model_dir / "config.json"), _json(
        model_dir / "generation_config.json")
    md: dict[str, Any] = {}
    for field, keys in CARD_KEYS.items():
        for k in keys:
            if k in card and md.get(field) is None:
                md[field] = card[k]
    lists: dict[str, list] = {}
    for field, keys in (("base_model", ("base_model", "base_models", "base_model_sources")),
                        ("dataset", ("datasets", "dataset", "dataset_sources"))):
        value = next((card[k] for k in keys if k in card), None) if any(k in card for k in keys) else None
        if any(k in card for k in keys):
            ids = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
            lists[field] = [_source_entry(i, total_params) for i in ids]
    for field, keys in (("tags", ("tags", "pipeline_tag")), ("languages", ("languages", "language"))):
        for k in keys:
            v = card.get(k)
            if v is not None:
                lists.setdefault(field, []).extend([v] if isinstance(v, str) else v if isinstance(v, list) else [])
    # config.json's _name_or_path (only when it looks like a hub id), then the folder name
    ids = []
    name_or_path = hf.get("_name_or_path")
    if name_or_path is not None and name_or_path.count("/") <= 1:
        ids.append(name_or_path)
    ids.append(model_dir.name)
    for model_id in ids:
        full, org, basename, finetune, version, size = model_id_components(model_id, total_params)
        for field, value in (("name", full and id_to_title(full)), ("organization", org and id_to_title(org)),
                             ("basename", basename), ("finetune", finetune), ("version", version),
                             ("size_label", size)):
            if md.get(field) is None and value is not None:
                md[field] = value
    if md.get("size_label") is None and total_params > 0:
        md["size_label"] = computed_label

    out: list[tuple[str, Any, Any]] = []
    for gen_keys, key, vt in SAMPLING:
        value = next((gen[k] for k in gen_keys if k in gen), None)
        if value is not None:
            out.append((key, value, vt))
    out.append((G.NAME, md.get("name") or model_dir.name, VT.STRING))
    for field in AUTHORSHIP:
        value = md.get(field)
        if value is None:
            continue
        if field == "license" and isinstance(value, list):
            value = ",".join(value)
        out.append((_G + field, str(value), VT.STRING))
    for field in ("base_model", "dataset"):
        if field in lists:
            out.append((f"{_G}{field}.count", len(lists[field]), VT.UINT32))
            for i, entry in enumerate(lists[field]):
                for k in ENTRY_FIELDS:
                    if k in entry:
                        out.append((f"{_G}{field}.{i}.{k}", str(entry[k]), VT.STRING))
    for field in ("tags", "languages"):
        if lists.get(field):
            out.append((_G + field, [str(v) for v in lists[field]], (VT.ARRAY, VT.STRING)))
    return out


def weight_count_notation(n: int, min_digits: int = 2) -> str:
    """4_200_000 -> '4.2M' (gguf.utility.model_weight_count_rounded_notation)."""
    for limit, scale, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M")):
        if n > limit:
            break
    else:
        scale, suffix = 1e-3, "K"
    scaled = n * scale
    fix = max(min_digits - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{fix}f}{suffix}"


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> tuple[int, str | None]:
    """(total parameters, size label '4.2M' or 'n_expert x per-expert size' like '4x4.2M') from the GGUF
    tensors' numpy shapes (GGUFWriter.get_total_parameter_count + gguf.utility.size_label)."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in shapes.items():
        size = 1
        for d in shape:
            size *= int(d)
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    n_experts = expert_sum // n_expert_tensors if n_expert_tensors else 0
    if n_experts:
        return total, f"{n_experts}x{weight_count_notation(shared + expert)}"
    return total, weight_count_notation(total)
