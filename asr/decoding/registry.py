"""The table of searchers: which head each one searches, its role, whether it streams and fuses
an LM, and how it is built. Every question about searchers is answered from :data:`SEARCHERS`:
the names a model supports (:func:`available_searchers`), the greedy or beam searcher of a model's
first trained head (:func:`searcher_for`, the default of packages, the dev WER of training and
``asr decode --searcher greedy|beam``), the searchers a list of names and roles selects for a
model or, before training, for a config's heads (:func:`select_searchers`: ``asr decode
--searcher`` and ``asr train --searchers``; one name: :func:`select_searcher`, for packages and
runtimes), and what :func:`build_searcher` builds.

=====================  =======  ========  =====  ===================================================
name                   role     streams   LM     needs
=====================  =======  ========  =====  ===================================================
ctc_greedy             greedy   yes       no     a ``ctc`` head
ctc_prefix_beam        beam     yes       yes    a ``ctc`` head
transducer_greedy      greedy   yes       no     a ``transducer`` head with loss full|pruned
transducer_beam        beam     yes       yes    a ``transducer`` head with loss full|pruned
tdt_greedy             greedy   yes       no     a ``transducer`` head with loss tdt|pruned_tdt
tdt_beam               beam     yes       yes    a ``transducer`` head with loss tdt|pruned_tdt
aed_beam               beam     no        no     an ``aed`` head (CTC prefix scores when a ``ctc``
                                                 head exists and ``ctc_weight > 0``)
attention_rescoring    rescore  yes       no     an ``aed`` head and a first pass:
                                                 ``ctc_prefix_beam`` with a ``ctc`` head, else
                                                 ``transducer_beam`` / ``tdt_beam`` (streaming
                                                 keeps the segment's frames, rescored at its
                                                 end; partial results are the first pass's)
cif_greedy             greedy   yes       no     a ``cif`` head (streaming keeps the segment's
                                                 frames for the final result; a partial result
                                                 decodes a window of the last ones)
cif_beam               beam     no        yes    a ``cif`` head (CTC prefix scores when a ``ctc``
                                                 head exists and ``ctc_weight > 0``)
cif_rescoring          rescore  yes       no     a ``cif`` head and a first pass, as
                                                 ``attention_rescoring`` (its LM fuses there;
                                                 streaming as ``attention_rescoring``)
=====================  =======  ========  =====  ===================================================

Every searcher gives each token's encoder frame (``Hypothesis.frames``, token times) except
``aed_beam`` (:func:`searcher_gives_times`).

The LM of an LM-fusing searcher is ``search.lm_path`` (a token or word n-gram, ``search.lm_unit``)
or the ``lm=`` argument; a rescoring searcher fuses it in its first pass, and the others warn
that they do not use it. ``transducer_beam``, ``tdt_beam`` and ``ctc_prefix_beam`` also take a
hotword graph (:mod:`asr.decoding.context_graph`; the rows' ``biases``): that of
``search.hotwords_file`` / ``search.hotwords``, or the ``context=`` argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from asr.decoding.aed_beam import AedBeamSearch
from asr.decoding.base import Searcher, StreamingSearcher
from asr.decoding.cif_beam import CifBeamSearch
from asr.decoding.cif_greedy import CifGreedySearch
from asr.decoding.config import SearchConfig
from asr.decoding.context_graph import ContextGraph, context_graph_for, hotwords_of
from asr.decoding.ctc_greedy import CtcGreedySearcher
from asr.decoding.ctc_prefix_beam import CtcPrefixBeamSearch
from asr.decoding.lm import LanguageModel, NgramLM, check_lm_file
from asr.decoding.rescoring import NbestRescoring
from asr.decoding.tdt_beam import TdtBeamSearch
from asr.decoding.transducer_beam import ModifiedBeamSearch
from asr.decoding.transducer_greedy import LabelLoopingGreedy
from asr.decoding.word_lm import load_word_lm
from asr.model import HEADS, ASRModel, HeadsConfig
from asr.tokenizers.base import Tokenizer

__all__ = [
    "BIASING_STREAMING_SEARCHERS",
    "ROLES",
    "SEARCHERS",
    "SEARCHER_NAMES",
    "STREAMING_SEARCHER_NAMES",
    "SearcherSpec",
    "available_searchers",
    "build_searcher",
    "check_searcher_name",
    "build_streaming_searcher",
    "resolve_searcher",
    "searcher_biases",
    "uses_given_hotwords",
    "searcher_for",
    "searcher_gives_times",
    "searcher_lm",
    "searcher_uses_lm",
    "select_searchers",
    "streaming_searcher_for",
]

logger = logging.getLogger(__name__)

Role = Literal["greedy", "beam", "rescore"]
#: Roles that ``build_searcher`` / ``asr decode --searcher`` accept in place of a name.
ROLES: tuple[str, ...] = ("greedy", "beam")

_Builder = Callable[
    [ASRModel, SearchConfig, "LanguageModel | None", "Tokenizer | None", "ContextGraph | None"],
    Searcher,
]


@dataclass(frozen=True)
class SearcherSpec:
    """One row of the searcher table.

    Attributes:
        name: the searcher's name.
        head: the head it searches (its vocabulary is the LM's).
        kinds: head kinds it accepts (``HEADS[head].kind``: ``rnnt``/``tdt`` for transducers).
        role: ``greedy``, ``beam`` or ``rescore``.
        streaming: whether it also runs chunk by chunk on a streaming state.
        fuses_lm: whether it uses ``search.lm_path`` (shallow fusion).
        needs: what the model must have, for messages.
        build: ``(model, search config, LM or None, tokenizer or None, hotword graph or None)
            -> searcher``.
        also_needs: heads beyond ``head`` of which at least one must exist (rescoring's first pass).
        biases: whether it takes a hotword graph (``search.hotwords_file`` / ``hotwords``).
        token_times: whether its hypotheses give each token's frame (``Hypothesis.frames``):
            all but ``aed_beam``, whose tokens are not tied to frames.
        joint_ctc: whether it also scores with the ``ctc`` head, where there is one, while
            ``search.ctc_weight > 0`` (joint CTC scoring: ``aed_beam``, ``cif_beam``).
    """

    name: str
    head: str
    kinds: tuple[str, ...]
    role: Role
    streaming: bool
    fuses_lm: bool
    needs: str
    build: _Builder
    also_needs: tuple[str, ...] = ()
    biases: bool = False
    token_times: bool = True
    joint_ctc: bool = False

    def usable(self, kinds: Mapping[str, str]) -> bool:
        """Whether a model whose heads have ``kinds`` (name -> kind) supports this searcher."""
        if kinds.get(self.head) not in self.kinds:
            return False
        return not self.also_needs or any(h in kinds for h in self.also_needs)


def _first_pass_name(model: ASRModel) -> str:
    """The searcher of a rescoring searcher's first pass: ``ctc_prefix_beam`` with a ``ctc``
    head, else the transducer head's beam search."""
    if "ctc" in model.head_kinds():
        return "ctc_prefix_beam"
    return searcher_for("beam", model, heads=("transducer",))


def _first_pass(
    model: ASRModel, cfg: SearchConfig, lm: LanguageModel | None, tokenizer: Tokenizer | None,
    context: ContextGraph | None,
) -> Searcher:
    """n-best producer for the rescoring searchers: all ``beam_size`` hypotheses are kept; the
    LM (``lm``, else ``cfg.lm_path``) fuses and a hotword graph biases it as they would the
    first pass on its own."""
    first_cfg = replace(cfg, nbest=cfg.beam_size)
    return build_searcher(_first_pass_name(model), model, first_cfg, lm=lm, tokenizer=tokenizer,
                          context=context)


def _ctc(model: ASRModel):
    return model.heads["ctc"] if "ctc" in model.heads else None


_RNNT = "a 'transducer' head with loss full|pruned"
_TDT = "a 'transducer' head with loss tdt|pruned_tdt"

#: Every searcher, in the order names are listed.
SEARCHERS: tuple[SearcherSpec, ...] = (
    SearcherSpec("ctc_greedy", "ctc", ("ctc",), "greedy", True, False, "a 'ctc' head",
                 lambda m, c, lm, tok, ctx: CtcGreedySearcher(m.heads["ctc"], c)),
    SearcherSpec("ctc_prefix_beam", "ctc", ("ctc",), "beam", True, True, "a 'ctc' head",
                 lambda m, c, lm, tok, ctx: CtcPrefixBeamSearch(m.heads["ctc"], c, lm, ctx),
                 biases=True),
    SearcherSpec("transducer_greedy", "transducer", ("rnnt",), "greedy", True, False, _RNNT,
                 lambda m, c, lm, tok, ctx: LabelLoopingGreedy(m.heads["transducer"], c)),
    SearcherSpec("transducer_beam", "transducer", ("rnnt",), "beam", True, True, _RNNT,
                 lambda m, c, lm, tok, ctx: ModifiedBeamSearch(m.heads["transducer"], c, lm, ctx),
                 biases=True),
    SearcherSpec("tdt_greedy", "transducer", ("tdt",), "greedy", True, False, _TDT,
                 lambda m, c, lm, tok, ctx: LabelLoopingGreedy(m.heads["transducer"], c)),
    SearcherSpec("tdt_beam", "transducer", ("tdt",), "beam", True, True, _TDT,
                 lambda m, c, lm, tok, ctx: TdtBeamSearch(m.heads["transducer"], c, lm, ctx),
                 biases=True),
    SearcherSpec("aed_beam", "aed", ("aed",), "beam", False, False, "an 'aed' head",
                 lambda m, c, lm, tok, ctx: AedBeamSearch(m.heads["aed"], c, _ctc(m)),
                 token_times=False, joint_ctc=True),
    SearcherSpec("attention_rescoring", "aed", ("aed",), "rescore", True, False,
                 "an 'aed' head and a 'ctc' or 'transducer' head",
                 lambda m, c, lm, tok, ctx: NbestRescoring(_first_pass(m, c, lm, tok, ctx),
                                                           m.heads["aed"], c),
                 also_needs=("ctc", "transducer")),
    SearcherSpec("cif_greedy", "cif", ("cif",), "greedy", True, False, "a 'cif' head",
                 lambda m, c, lm, tok, ctx: CifGreedySearch(m.heads["cif"], c)),
    SearcherSpec("cif_beam", "cif", ("cif",), "beam", False, True, "a 'cif' head",
                 lambda m, c, lm, tok, ctx: CifBeamSearch(m.heads["cif"], c, lm, _ctc(m)),
                 joint_ctc=True),
    SearcherSpec("cif_rescoring", "cif", ("cif",), "rescore", True, False,
                 "a 'cif' head and a 'ctc' or 'transducer' head",
                 lambda m, c, lm, tok, ctx: NbestRescoring(_first_pass(m, c, lm, tok, ctx),
                                                           m.heads["cif"], c),
                 also_needs=("ctc", "transducer")),
)  # fmt: skip

_BY_NAME = {spec.name: spec for spec in SEARCHERS}
SEARCHER_NAMES: tuple[str, ...] = tuple(_BY_NAME)
STREAMING_SEARCHER_NAMES: tuple[str, ...] = tuple(s.name for s in SEARCHERS if s.streaming)
#: The streaming searchers that take a hotword graph per stream.
BIASING_STREAMING_SEARCHERS: tuple[str, ...] = tuple(
    s.name for s in SEARCHERS if s.streaming and s.biases
)

#: The default options (frozen, so safe to share as a default argument).
DEFAULT_SEARCH = SearchConfig()


def available_searchers(model: ASRModel) -> list[str]:
    """The searcher names this model's heads support, in :data:`SEARCHERS` order."""
    kinds = model.head_kinds()
    return [spec.name for spec in SEARCHERS if spec.usable(kinds)]


def searcher_for(
    role: Role, model: ASRModel, trained_only: bool = False, heads: tuple[str, ...] | None = None
) -> str | None:
    """The ``role`` searcher of the model's first trained head that has one (loss weight > 0;
    heads in :data:`HEADS` order: transducer, ctc, aed, cif), else of its first head that has
    one, or None: a head of loss weight 0 is built, not trained. The one rule of a role
    (``asr decode --searcher greedy|beam``, a runtime's ``searcher="beam"``; a package's
    default searcher and the streaming fallback prefer the trained heads by it too).

    Args:
        role: ``greedy`` or ``beam``.
        model: the model.
        trained_only: only the trained heads (the dev WER of a training run).
        heads: consider only these heads.
    """
    return _searcher_of_role(role, model.head_kinds(trained_only),
                             model.head_kinds(trained_only=True), heads)


def _searcher_of_role(
    role: str, kinds: Mapping[str, str], trained: Collection[str],
    heads: tuple[str, ...] | None = None,
) -> str | None:
    """:func:`searcher_for`'s rule over heads of ``kinds`` (name -> kind), ``trained`` those
    of loss weight > 0."""
    for pool in ([h for h in kinds if h in trained], list(kinds)):
        for head in pool:
            if heads is not None and head not in heads:
                continue
            for spec in SEARCHERS:
                if spec.head == head and spec.role == role and spec.usable(kinds):
                    return spec.name
    return None


def streaming_searcher_for(model: ASRModel, preferred: str | None = None) -> str | None:
    """The searcher a streaming recognizer uses by default: ``preferred`` (a name or role, e.g. a
    package's default searcher) when it streams, else the model's greedy searcher when that
    streams, else the first streaming searcher the heads support; None if none streams. Of
    those fallbacks, a trained head's (``heads.loss_weights`` > 0) comes first, as the default
    searcher of a package is a trained head's: a head of loss weight 0 is built, not trained.
    A rescoring searcher streams when it is ``preferred`` but is no fallback (its first pass
    searches another head, which may be the untrained one)."""
    if preferred is not None:
        name = resolve_searcher(preferred, model)
        if _BY_NAME[name].streaming and _BY_NAME[name].usable(model.head_kinds()):
            return name
    streaming = [n for n in available_searchers(model)
                 if _BY_NAME[n].streaming and _BY_NAME[n].role != "rescore"]
    for trained_only in (True, False):
        heads = tuple(model.head_kinds(trained_only))
        greedy = searcher_for("greedy", model, trained_only=trained_only)
        if greedy is not None and _BY_NAME[greedy].streaming:
            return greedy
        of_heads = [n for n in streaming if _BY_NAME[n].head in heads]
        if of_heads:
            return of_heads[0]
    return None


def searcher_gives_times(name: str) -> bool:
    """Whether searcher ``name`` (a name, not a role) gives token times (``Hypothesis.frames``)."""
    return _BY_NAME[name].token_times


def searcher_biases(name: str) -> bool:
    """Whether searcher ``name`` (a name, not a role) takes a hotword graph."""
    return _BY_NAME[name].biases


def searcher_uses_lm(name: str) -> bool:
    """Whether searcher ``name`` (a name, not a role) uses ``search.lm_path``: it fuses the LM,
    or (a rescoring searcher) its first pass does."""
    spec = _BY_NAME[name]
    return spec.fuses_lm or spec.role == "rescore"


def uses_given_hotwords(name: str) -> bool:
    """Whether searcher ``name`` (a name, not a role) uses the hotwords a run gives it; when
    it does not, logs the warning that they are ignored (naming the searchers that bias). The
    one rule for a run with hotwords and such a searcher, offline or streaming: it warns and
    goes on without them."""
    if _BY_NAME[name].biases:
        return True
    logger.warning("searcher %r does not use hotwords; those given are ignored (hotwords bias: "
                   "%s)", name, ", ".join(s.name for s in SEARCHERS if s.biases))
    return False


def resolve_searcher(name: str, model: ASRModel) -> str:
    """``name`` itself, or for a role (``greedy``, ``beam``) the model's searcher of that role
    (:func:`searcher_for`: a trained head's first).

    Raises:
        ValueError: for an unknown name, or a role none of the model's heads has.
    """
    return _resolve(name, model)


def select_searchers(
    names: Sequence[str], heads: ASRModel | HeadsConfig, *, biasing: bool = False,
    search: SearchConfig | None = None, warned: set[str] | None = None,
) -> list[str]:
    """The searchers that ``names`` select for a model, or for the heads of a config before a
    model is trained: each name as ``asr decode --searcher`` takes it (a searcher name, a role
    ``greedy`` / ``beam`` for a trained head's (:func:`searcher_for`), or ``all`` for every
    searcher the heads support), in order, each searcher once.

    Args:
        names: searcher names, roles or ``all``.
        heads: a model, or a config's ``heads``.
        biasing: also require that every selected searcher takes hotwords (contextual biasing:
            the rows' ``biases``), as a decode with ``search.hotwords_file`` needs.
        search: the search settings they will run with (None: the defaults), for the warning
            below: ``search.ctc_weight`` tells whether a joint CTC search reads the ``ctc`` head.
        warned: the searchers a run already warned of below (``asr train``'s ``--searchers``,
            ``--biasing-searchers`` and ``--decode-arg``): not warned of again; those this call
            warns of are added to it. None: each is checked.

    Raises:
        ValueError: at the first name that is unknown, a role none of the heads has, or a
            searcher the heads do not support (naming the heads and the available searchers);
            with ``biasing``, at the first selected searcher that takes no hotwords.

    For a config's heads (``asr train``'s checks; ``asr decode`` and ``asr export-package``
    pass the experiment's, which the model is built from), a selected searcher that reads a
    head of loss weight 0 (which training keeps but does not train: e.g. ``aed_beam`` with
    ``heads.loss_weights.aed: 0``, or with ``heads.loss_weights.ctc: 0`` and
    ``search.ctc_weight > 0``, its joint CTC scores) is logged as a
    warning, not refused: such a head may hold weights trained elsewhere.
    """
    configs = _head_configs(heads)
    selected: list[str] = []
    for name in names:
        check_searcher_name(name, ("all",))  # its error names 'all' among what it could be
        selected += _available(configs) if name == "all" else [_select(name, heads)]
    selected = list(dict.fromkeys(selected))
    if isinstance(heads, HeadsConfig):
        for name in selected:
            if warned is not None and name in warned:
                continue
            if _warn_untrained(name, heads, search or SearchConfig()) and warned is not None:
                warned.add(name)
    if biasing:
        for name in selected:
            if not _BY_NAME[name].biases:
                raise ValueError(
                    f"searcher {name!r} takes no hotwords (contextual biasing); these do: "
                    f"{', '.join(s.name for s in SEARCHERS if s.biases)}"
                )
    return selected


def _warn_untrained(name: str, heads: HeadsConfig, search: SearchConfig) -> bool:
    """Logs a warning for each head that searcher ``name`` reads (its own, and a rescoring
    searcher's first pass: the ``ctc`` head when there is one; a joint CTC search's ``ctc``
    head while ``search.ctc_weight > 0``) and ``heads.loss_weights`` leaves at 0; True if it
    logged one."""
    spec = _BY_NAME[name]
    weights = heads.weights()
    warned = False
    if spec.joint_ctc and search.ctc_weight > 0 and weights.get("ctc", 1.0) == 0:
        warned = True
        logger.warning("searcher %r also scores with the ctc head (search.ctc_weight %g), which "
                       "heads.loss_weights.ctc: 0 leaves untrained: give it a weight > 0, or "
                       "set search.ctc_weight=0", name, search.ctc_weight)
    first_pass = next((h for h in spec.also_needs if h in weights), None)
    for head in dict.fromkeys(h for h in (spec.head, first_pass) if h is not None):
        if weights.get(head, 1.0) == 0:
            logger.warning("searcher %r decodes with the %s head, which heads.loss_weights.%s: 0 "
                           "leaves untrained: give it a weight > 0, or choose another searcher",
                           name, head, head)
            warned = True
    return warned


def select_searcher(name: str, heads: ASRModel | HeadsConfig) -> str:
    """The one searcher that ``name`` (a searcher name or a role) selects for a model or a
    config's heads, by the rule of :func:`select_searchers` (a package's default searcher,
    ``asr export-package --searcher``, a runtime's ``searcher=``).

    Raises:
        ValueError: for an unknown name, a role none of the heads has, or a searcher the heads
            do not support (naming the heads and the available searchers).
    """
    return _select(name, heads)


def _select(name: str, heads: ASRModel | HeadsConfig) -> str:
    return _check_configs(_resolve(name, heads), _head_configs(heads)).name


def _head_configs(heads: ASRModel | HeadsConfig) -> dict[str, Any]:
    """Head name -> its config section, of a model or of a config's ``heads``."""
    if isinstance(heads, HeadsConfig):
        return heads.enabled()
    return {name: head.cfg for name, head in heads.heads.items()}


def _kinds(configs: Mapping[str, Any]) -> dict[str, str]:
    return {name: HEADS[name].kind(cfg) for name, cfg in configs.items()}


def _available(configs: Mapping[str, Any]) -> list[str]:
    kinds = _kinds(configs)
    return [spec.name for spec in SEARCHERS if spec.usable(kinds)]


def _trained(heads: ASRModel | HeadsConfig) -> list[str]:
    """The heads of loss weight > 0, of a model or of a config's ``heads``."""
    weights = heads.weights() if isinstance(heads, HeadsConfig) else heads.loss_weights
    return [name for name, weight in weights.items() if weight > 0]


def _resolve(name: str, heads: ASRModel | HeadsConfig) -> str:
    if name in ROLES:
        configs = _head_configs(heads)
        resolved = _searcher_of_role(name, _kinds(configs), _trained(heads))
        if resolved is None:
            raise ValueError(
                f"no {name} searcher for heads {_describe_heads(configs)}; available searchers: "
                f"{_available(configs)}"
            )
        return resolved
    return check_searcher_name(name)


def check_searcher_name(name: str, also: tuple[str, ...] = ()) -> str:
    """``name`` when it is a searcher name, a role (``greedy``, ``beam``) or one of ``also``
    (``asr decode --searcher all``): what any model's searcher could be, checked before a model
    is loaded (``asr decode``'s parser: an unknown name is a usage error at once, not after the
    weights are read and averaged).

    Raises:
        ValueError: naming the unknown name and the names and roles there are.
    """
    if name in _BY_NAME or name in ROLES or name in also:
        return name
    raise ValueError(
        f"unknown searcher {name!r}; expected one of {list(SEARCHER_NAMES)} or a role "
        f"({', '.join(ROLES)}){''.join(f' or {a!r}' for a in also)}"
    )


def _describe_heads(configs: Mapping[str, Any]) -> list[str]:
    return [
        f"transducer(loss={cfg.loss})" if key == "transducer" else key
        for key, cfg in configs.items()
    ]


def _check(name: str, model: ASRModel) -> SearcherSpec:
    return _check_configs(name, _head_configs(model))


def _check_configs(name: str, configs: Mapping[str, Any]) -> SearcherSpec:
    spec = _BY_NAME[name]
    if not spec.usable(_kinds(configs)):
        raise ValueError(
            f"searcher {name!r} needs {spec.needs}, but the heads are "
            f"{_describe_heads(configs)}; available searchers: {_available(configs)}"
        )
    return spec


def _load_lm(
    model: ASRModel, cfg: SearchConfig, head: str, tokenizer: Tokenizer | None
) -> LanguageModel | None:
    """The LM of ``cfg.lm_path``: a token n-gram, or a word n-gram over a lexicon spelled by
    ``tokenizer`` (``cfg.lm_unit == "word"``)."""
    if cfg.lm_path is None:
        return None
    check_lm_file(cfg.lm_path)  # names the field, not only the path (an OSError's words)
    vocab_size = model.heads[head].vocab_size
    if cfg.lm_unit == "token":
        return NgramLM.from_arpa(cfg.lm_path, vocab_size=vocab_size)
    if tokenizer is None:
        raise ValueError(
            "search.lm_unit=word needs the tokenizer to spell the lexicon "
            "(build_searcher(..., tokenizer=...))"
        )
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"tokenizer vocabulary {tokenizer.vocab_size} differs from the {head} head's "
            f"{vocab_size}"
        )
    return load_word_lm(cfg.lm_path, tokenizer)


def _warn_unused_lm(spec: SearcherSpec, cfg: SearchConfig, lm: LanguageModel | None) -> None:
    """Warns when an LM is set (``lm``, or ``cfg.lm_path`` with ``cfg.lm_weight > 0``) for a
    searcher that fuses none: ``aed_beam`` and the greedy ones would decode without it silently
    (a rescoring searcher fuses it in its first pass)."""
    if searcher_uses_lm(spec.name):
        return
    if lm is not None or (cfg.lm_path is not None and cfg.lm_weight > 0):
        logger.warning("searcher %r fuses no LM; the LM given (search.lm_path) is not used "
                       "(LM fusion: %s)", spec.name,
                       ", ".join(s.name for s in SEARCHERS if searcher_uses_lm(s.name)))


def searcher_lm(
    name: str, model: ASRModel, cfg: SearchConfig, tokenizer: Tokenizer | None = None
) -> LanguageModel | None:
    """The LM that searcher ``name`` (a name or role) loads from ``cfg.lm_path`` (a rescoring
    searcher: its first pass's); None when it fuses none. For callers that build the searcher
    several times (with other hotwords) and pass it as ``build_searcher(..., lm=...)``, so that
    the file is read once."""
    spec = _check(resolve_searcher(name, model), model)
    if spec.role == "rescore":
        spec = _BY_NAME[_first_pass_name(model)]
    return _load_lm(model, cfg, spec.head, tokenizer) if spec.fuses_lm else None


def build_searcher(
    name: str,
    model: ASRModel,
    cfg: SearchConfig = DEFAULT_SEARCH,
    *,
    lm: LanguageModel | None = None,
    tokenizer: Tokenizer | None = None,
    context: ContextGraph | None = None,
) -> Searcher:
    """Builds searcher ``name`` over the heads of ``model``.

    The searcher holds references to the heads (no copies) and runs under ``torch.no_grad``;
    put the model in eval mode first (dropout would make decoding random).

    Args:
        name: one of :data:`SEARCHER_NAMES`, or a role (``greedy``, ``beam``) for the model's
            searcher of that role (:func:`searcher_for`).
        model: the model whose heads are searched.
        cfg: search options.
        lm: LM for the LM-fusing searchers and the first pass of the rescoring ones
            (overrides ``cfg.lm_path``).
        tokenizer: the model's tokenizer; needed to spell the lexicon of a word LM
            (``cfg.lm_unit == "word"``) and to tokenize hotwords.
        context: hotword graph for the biasing searchers (overrides ``cfg.hotwords_file`` and
            ``cfg.hotwords``).

    Raises:
        ValueError: on an unknown name, or one the model's heads do not support (naming the
            missing head and the available searchers).
    """
    spec = _check(resolve_searcher(name, model), model)
    if model.training:
        logger.warning("build_searcher(%r): the model is in training mode (dropout is on)", name)
    if lm is None and spec.fuses_lm:
        lm = _load_lm(model, cfg, spec.head, tokenizer)
    _warn_unused_lm(spec, cfg, lm)
    if spec.biases and context is None:
        context = context_graph_for(cfg, tokenizer)
    elif not spec.biases and spec.role != "rescore" and (context is not None or hotwords_of(cfg)):
        uses_given_hotwords(spec.name)  # warns that they are ignored
    return spec.build(model, cfg, lm, tokenizer, context)


def build_streaming_searcher(
    name: str,
    model: ASRModel,
    cfg: SearchConfig = DEFAULT_SEARCH,
    *,
    tokenizer: Tokenizer | None = None,
) -> StreamingSearcher:
    """Builds streaming searcher ``name`` (one of :data:`STREAMING_SEARCHER_NAMES`, or
    ``greedy``), with its LM (``cfg.lm_path``) and hotword graph (``cfg.hotwords_file`` /
    ``cfg.hotwords``: every stream's default) where its row fuses / biases.

    Raises:
        ValueError: as :func:`build_searcher`, and for a searcher that does not stream.
    """
    resolved = resolve_searcher(name, model)
    spec = _check(resolved, model)
    if not spec.streaming:
        streaming = [n for n in available_searchers(model) if _BY_NAME[n].streaming]
        raise ValueError(
            f"searcher {resolved!r} does not stream; streaming searchers of this model: "
            f"{streaming} (all streaming searchers: {list(STREAMING_SEARCHER_NAMES)})"
        )
    lm = _load_lm(model, cfg, spec.head, tokenizer) if spec.fuses_lm else None
    _warn_unused_lm(spec, cfg, lm)
    context = context_graph_for(cfg, tokenizer) if spec.biases else None
    searcher = spec.build(model, cfg, lm, tokenizer, context)
    assert isinstance(searcher, StreamingSearcher)
    return searcher
