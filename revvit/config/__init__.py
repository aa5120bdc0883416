"""Config loading: defaults <- YAML <- command-line opts, then validate and freeze.

The tree is an fvcore CfgNode, as PySlowFast's is, so code written for PySlowFast works unchanged:
``cfg.merge_from_file(path)`` follows ``_BASE_`` and ``cfg.merge_from_list(opts)`` takes the command
line's strings. Both go through revvit's own merge, which yacs and fvcore would do with messages that
do not help a user find the key they meant: every mistake names the full key, the file it came from
and the nearest valid keys, and a key set twice in one YAML mapping is refused (PyYAML keeps the last
silently, so the first would be ignored without a word).
"""

import difflib
import os

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from yacs.config import CfgNode as _YacsCfgNode
from yacs.config import _check_and_coerce_cfg_value_type

from .defaults import get_defaults
from .validate import ConfigError, validate_cfg

__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config", "merge_file", "merge_opts", "validate_cfg"]

# What a type error adds for keys whose special values a user may write as a word.
_HINTS = {"DATA_LOADER.NUM_WORKERS": " -1 means the machine's cores per process (what other tools call auto)."}


class CfgNode(_FvcoreCfgNode):
    """fvcore's CfgNode (PySlowFast's) whose merges are revvit's: same results, errors that name the fix.

    Errors are ConfigError (a ValueError) where yacs raises KeyError, ValueError or AssertionError;
    a frozen tree refuses merges with yacs' AttributeError.
    """

    def merge_from_file(self, cfg_filename, allow_unsafe=False):
        """Merge a YAML file after its ``_BASE_`` chain. Files are always read with safe loading;
        ``allow_unsafe`` is accepted for callers written for fvcore and changes nothing."""
        self._refuse_if_frozen("merge_from_file")
        merge_file(self, cfg_filename)

    def merge_from_list(self, cfg_list):
        """Merge ``[KEY, VALUE, ...]`` strings, the command-line form (``"False"``, ``"[1, 2]"``, ``"-1"``)."""
        self._refuse_if_frozen("merge_from_list")
        merge_opts(self, cfg_list, source="merge_from_list")

    def _refuse_if_frozen(self, method):
        if self.is_frozen():
            raise AttributeError(f"{method} on a frozen config: clone it first (cfg = cfg.clone(); cfg.defrost()).")


def get_cfg():
    """A mutable copy of the default config tree."""
    return CfgNode(get_defaults())


def _all_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        full = prefix + k
        keys.append(full)
        if isinstance(v, _YacsCfgNode):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _unknown_key(cfg, full_key, source):
    close = difflib.get_close_matches(full_key, _all_keys(cfg), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown config key '{full_key}' (from {source}).{hint}")


def _coerce(value, original, full_key, source):
    # Integers are fine where floats are expected (``SOLVER.BASE_LR 1``); yacs would refuse them.
    if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        return _check_and_coerce_cfg_value_type(value, original, full_key.split(".")[-1], full_key)
    except ValueError:
        raise ConfigError(
            f"Config key '{full_key}' (from {source}) expects {type(original).__name__} "
            f"like {original!r}, got {type(value).__name__} {value!r}.{_HINTS.get(full_key, '')}"
        ) from None


def _merge_dict(root, node, incoming, source, prefix=""):
    for key, value in incoming.items():
        full_key = prefix + key
        if key not in node:
            raise _unknown_key(root, full_key, source)
        original = node[key]
        if isinstance(original, _YacsCfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key '{full_key}' (from {source}) is a section; got {value!r}.")
            _merge_dict(root, original, value, source, full_key + ".")
        else:
            if isinstance(value, dict):
                raise ConfigError(f"Config key '{full_key}' (from {source}) is a value, not a section.")
            node[key] = _coerce(_YacsCfgNode._decode_cfg_value(value), original, full_key, source)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first, again):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that appears twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges are meant to be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the safe loader's own check names it
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKey(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path):
    """The mapping in YAML file ``path``; a syntax error names file:line:column and the parser's reason."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise ConfigError(
            f"Key '{err.key}' appears twice in one mapping of {path}: at {path}:{err.first.line + 1}:{err.first.column + 1} "
            f"and at {path}:{err.again.line + 1}:{err.again.column + 1}. YAML would keep only the last; remove one of them."
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem, context = getattr(err, "problem", None), getattr(err, "context", None)
        start = getattr(err, "context_mark", None)
        if context and start is not None and start is not mark:
            context += f" started at {start.line + 1}:{start.column + 1}"
        reason = f"{problem} ({context})" if problem and context else problem or context
        raise ConfigError(f"Malformed YAML at {where}: {reason or err}. Fix the file at that line.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read config file '{path}': {err}.") from None
    if data is None:
        raise ConfigError(
            f"Config file '{path}' is empty (no keys, or only comments). Pass the YAML of a model, e.g. "
            "configs/ImageNet/REV_VIT_S.yaml, or start the file with '_BASE_: <that file>'."
        )
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, got {type(data).__name__}.")
    return data


def merge_file(cfg, path, _chain=()):
    """Merge a YAML file (safe-loaded) into ``cfg``, after the file its ``_BASE_`` names (recursively).

    ``_chain`` holds the files that led here, so a loop of ``_BASE_`` files is named instead of
    ending in a RecursionError, and a missing base names the file that refers to it.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: '{path}'. Pass an existing YAML, e.g. configs/Demo/REV_VIT_DIGITS.yaml.")
    real = os.path.realpath(path)
    seen = [os.path.realpath(p) for p in _chain]
    if real in seen:
        loop = " -> ".join(list(_chain[seen.index(real):]) + [path])
        raise ConfigError(f"_BASE_ files form a loop: {loop}. Remove the _BASE_ line that closes it.")
    data = _read_yaml(path)
    if "_BASE_" in data:
        base = data.pop("_BASE_")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"_BASE_ in '{path}' must be a file path, got {base!r}.")
        base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
        if not os.path.isfile(base_path):
            raise ConfigError(
                f"_BASE_ '{base}' named in '{path}' not found (looked for '{base_path}'; a _BASE_ path is "
                "relative to the file that names it). Fix the _BASE_ line of that file."
            )
        merge_file(cfg, base_path, _chain + (path,))
    _merge_dict(cfg, cfg, data, f"'{path}'")
    return cfg


def merge_opts(cfg, opts, source="the command line"):
    """Merge flat ``[KEY, VALUE, KEY, VALUE, ...]`` overrides (the command-line form); ``source``
    names where they came from in error messages."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"Overrides must come as KEY VALUE pairs; got an odd list: {opts}")
    for full_key, raw in zip(opts[0::2], opts[1::2]):
        node, parts = cfg, full_key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], _YacsCfgNode):
                raise _unknown_key(cfg, full_key, source)
            node = node[part]
        leaf = parts[-1]
        if leaf not in node or isinstance(node[leaf], _YacsCfgNode):
            raise _unknown_key(cfg, full_key, source)
        node[leaf] = _coerce(_YacsCfgNode._decode_cfg_value(raw), node[leaf], full_key, source)
    return cfg


def load_config(args):
    """Defaults <- ``args.cfg_file`` <- ``args.opts``; then launcher args, validation, freeze.

    ``args`` is the argparse namespace of tools/run_net.py; any object with ``cfg_file`` and
    ``opts`` attributes works.
    """
    cfg = get_cfg()
    if getattr(args, "cfg_file", None):
        merge_file(cfg, args.cfg_file)
    merge_opts(cfg, getattr(args, "opts", None))
    if getattr(args, "num_shards", None) is not None:
        cfg.NUM_SHARDS = args.num_shards
    if getattr(args, "shard_id", None) is not None:
        cfg.SHARD_ID = args.shard_id
    validate_cfg(cfg)
    cfg.freeze()
    return cfg
