"""CPU to decode an A-ASSOCIATE-RQ of many presentation contexts, to build its contexts and
to encode its answer: with the fence's ``association-items`` and ``proposal-memo`` patches
(``current``), with the first only (``no-memo``), and with pynetdicom's own code.

The request is what dcmtk's ``storescu`` proposes by default: every storage SOP class in
pynetdicom's list, three transfer syntaxes each; the answer accepts two contexts in three
and refuses the third (user-rejection). The variants run in this one process, interleaved
round by round (the fence applied, its patches left off through ``MIMIC_PATCHES_OFF`` and
their fallbacks), and the CPU time of N decodes, N conversions of the decoded request to its
primitive (the ``PresentationContext`` objects negotiation reads) and N encodes is read with
``time.process_time``. The same request N times over is what ``current`` remembers: as a
modality proposing the same contexts on every association.

    .venv/bin/python bench/association_pdus.py [--count 300] [--rounds 6] [--json FILE]

A whole association's set-up (TLS, negotiation, threads) is measured by
``bench/receive_cpu.py --count 1 --associations N --variants current,association-items``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynetdicom import StoragePresentationContexts, build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from mimic_server import patches

VARIANTS = ("current", "no-memo", "pynetdicom")
#: The patches each variant leaves off.
_OFF = {"current": "", "no-memo": patches.PROPOSAL_MEMO,
        "pynetdicom": f"{patches.ASSOCIATION_ITEMS},{patches.PROPOSAL_MEMO}"}
SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")


def storescu_like_request() -> tuple[bytes, A_ASSOCIATE]:
    """An encoded A-ASSOCIATE-RQ proposing every storage context with three transfer
    syntaxes, and the primitive of its answer (every third context refused)."""
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title = "MODALITY1"
    request.called_ae_title = "MIMIC"
    contexts = []
    for number, template in enumerate(StoragePresentationContexts, start=1):
        context = build_context(template.abstract_syntax, list(SYNTAXES))
        context.context_id = 2 * number - 1
        contexts.append(context)
    request.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    request.user_information = [length]
    answer = A_ASSOCIATE()
    answer.application_context_name = request.application_context_name
    answer.calling_ae_title = request.calling_ae_title
    answer.called_ae_title = request.called_ae_title
    answer.result = 0x00
    results = []
    for context in contexts:
        result = PresentationContext()
        result.context_id = context.context_id
        result.abstract_syntax = context.abstract_syntax
        result.transfer_syntax = [context.transfer_syntax[0]]
        result.result = 0x01 if context.context_id % 3 == 0 else 0x00
        results.append(result)
    answer.presentation_context_definition_results_list = results
    answer.user_information = [length]
    return A_ASSOCIATE_RQ(request).encode(), answer


def use(variant: str) -> None:
    """Start the fence with the variant's patches applied and the others left off."""
    off = _OFF[variant]
    if off:
        os.environ[patches.PATCHES_OFF] = off
    else:
        os.environ.pop(patches.PATCHES_OFF, None)
    applied = patches.apply().applied
    expected = {patches.ASSOCIATION_ITEMS, patches.PROPOSAL_MEMO} - set(off.split(","))
    if {patches.ASSOCIATION_ITEMS, patches.PROPOSAL_MEMO} & applied != expected:
        raise SystemExit(f"the fence did not start as {variant}")


def measure(raw: bytes, answer: A_ASSOCIATE, count: int) -> tuple[float, float, float]:
    """ms of CPU per decode of ``raw``, per conversion of the decoded request to its
    primitive, and per encode of ``answer``."""
    clock = time.process_time
    decoding = converting = 0.0
    for _ in range(count):  # one request at a time: many held at once would add the GC's work
        start = clock()
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(raw)
        decoded = clock()
        pdu.to_primitive()
        converted = clock()
        decoding += decoded - start
        converting += converted - decoded
    after_conversion = clock()
    for _ in range(count):
        A_ASSOCIATE_AC(answer).encode()
    encoded = time.process_time()
    return (1000 * decoding / count, 1000 * converting / count,
            1000 * (encoded - after_conversion) / count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="decodes and encodes a round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    # Leaving the patch off is done through its fallback, which warns each time: expected here.
    logging.getLogger("mimic_server.patches").setLevel(logging.ERROR)
    raw, answer = storescu_like_request()
    rounds: dict[str, dict[str, list[float]]] = {
        v: {"decode_ms": [], "contexts_ms": [], "encode_ms": []} for v in VARIANTS}
    for number in range(args.rounds):
        order = VARIANTS if number % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            use(variant)
            decode, contexts, encode = measure(raw, answer, args.count)
            rounds[variant]["decode_ms"].append(round(decode, 4))
            rounds[variant]["contexts_ms"].append(round(contexts, 4))
            rounds[variant]["encode_ms"].append(round(encode, 4))
    use("current")
    summary = {v: {k: round(statistics.median(s), 3) for k, s in r.items()}
               for v, r in rounds.items()}
    contexts = len(StoragePresentationContexts)
    print(f"A-ASSOCIATE-RQ of {contexts} contexts x {len(SYNTAXES)} transfer syntaxes "
          f"({len(raw)} bytes), ms of CPU, median of {args.rounds} rounds:")
    for variant in VARIANTS:
        s = summary[variant]
        print(f"  {variant:<11} decode RQ {s['decode_ms']:6.3f}   its contexts "
              f"{s['contexts_ms']:6.3f}   encode AC {s['encode_ms']:6.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"contexts": contexts, "bytes": len(raw), "rounds": rounds, "summary": summary},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
