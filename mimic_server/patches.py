"""The fence: every place MIMIC replaces or reaches into a library's internals, checked first.

MIMIC's speed-ups and guards replace pynetdicom internals (class swaps of the DUL and DIMSE
providers and of accepted sockets, process-wide encoder replacement, private attributes) and
one private azure-core method. Such a replacement is right only for the library code it was
written against: a release that renames, moves or changes a replaced function would make
MIMIC call something that is no longer there, or skip a step the new code added. So every
patch is listed here, in :data:`PATCHES`, with the library versions it was verified on and
the call sites it relies on (that each exists, its signature, and a hash of its source). At
start, :func:`apply` checks every call site against the installed libraries:

* a patch whose call sites are as verified is applied;
* a patch with a changed call site is not: the library's own path runs instead, and one
  WARNING names the patch, the installed version and the site that changed;
* a *required* patch (no library path can stand in for it: the identity hook, the server
  registration pynetdicom's ``shutdown`` expects, the process-wide switches) with a changed
  call site stops the start with a ``ConfigurationError``.

The patch bodies stay where their logic belongs (``net/``, ``codec/``, ``dimse/``,
``certs/``); this module only decides and applies. It sits beside ``app.py`` rather than in
``net/`` because its patches span four rooms and only the composition root may know them
all; ``app.py`` is its only importer. ``tests/unit/test_patches.py`` fails when an installed
library no longer matches, and ``constraints.txt`` pins the verified versions
(``scripts/lock.sh`` regenerates it).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pynetdicom.acse
import pynetdicom.association
import pynetdicom.dimse_messages
import pynetdicom.dimse_primitives
import pynetdicom.fsm
import pynetdicom.pdu
import pynetdicom.pdu_items
import pynetdicom.pdu_primitives
import pynetdicom.presentation
import pynetdicom.service_class
import pynetdicom.transport
from azure.core.pipeline.policies import RetryPolicy
from pynetdicom import _config
from pynetdicom.dimse import DIMSEServiceProvider

from mimic_server.certs import vaulthttp
from mimic_server.codec import answer, command_set
from mimic_server.dimse import (
    echo,
    get_answer,
    move_answer,
    move_attempt,
    protocol_version,
    raw_send,
    receiving,
    stream_send,
    syntax_refusal,
)
from mimic_server.errors import ConfigurationError
from mimic_server.net import (
    acknowledge,
    association_items,
    contexts,
    known_uids,
    pdata_batches,
    proposals,
    reactor,
    requestor,
    server,
)

log = logging.getLogger(__name__)

#: The versions every patch below was verified on (tests, benchmarks, byte comparisons).
PYNETDICOM = ("pynetdicom", "3.0.4")
PYDICOM = ("pydicom", "3.0.2")
AZURE_CORE = ("azure-core", "1.41.0")

#: Speed-up patches to leave off (names, comma-separated), for benchmarks and tests that
#: measure the library's own path against MIMIC's in one run; not an operator setting.
PATCHES_OFF = "MIMIC_PATCHES_OFF"

#: Set on every replacement the fence installs: the function it replaced. The checks look
#: through it, so a second start in one process checks pynetdicom's code, not MIMIC's.
ORIGINAL = "_mimic_original"
#: Set on every replacement the fence installs: the name of its patch. Two patches may wrap
#: one library function (a chain linked by :data:`ORIGINAL`); each is installed once.
PATCH_NAME = "_mimic_patch"
#: Set on every replacement the fence installs: whether the function it replaced was
#: inherited (a class's method defined by a base class), so that its fallback removes the
#: replacement instead of setting the base's function on the class itself.
INHERITED = "_mimic_inherited"


@dataclass(frozen=True)
class Site:
    """One library object a patch replaces or relies on, as it was verified.

    ``target`` is ``"module:Qualified.name"``; ``signature`` its parameters without annotations
    (:func:`shape`: stable across Python versions; the source hash covers annotations);
    ``source`` the first 16 hex digits of the SHA-256 of its source (:func:`source_digest`);
    ``mentions`` a name its source must use (for required sites, whose exact source may
    change as long as they still do what MIMIC relies on). ``None`` means "not checked".
    """

    target: str
    signature: str | None = None
    source: str | None = None
    mentions: str | None = None


@dataclass(frozen=True)
class Patch:
    """One replacement of library internals: where it lives, what it needs, what it buys."""

    name: str
    body: str  #: where the replacement is written
    without: str  #: what the library's own path costs when the patch is not applied
    verified: tuple[tuple[str, str], ...]
    sites: tuple[Site, ...]
    required: bool = False


# Names the rest of the fence refers to.
PDU_LENGTH_GUARD = "pdu-length-guard"
IDLE_WAITS = "idle-waits"
ACCEPT_WAITS = "accept-waits"
COMMAND_SET_ENCODER = "command-set-encoder"
DIRECT_RESPONSES = "direct-responses"
PDATA_BATCHES = "pdata-batches"
ANSWER_ENCODER = "answer-encoder"
STORED_BYTES_SEND = "stored-bytes-send"
STREAMED_SEND = "streamed-send"
ANSWERED_SEND = "answered-send"
RETRY_AFTER_CAP = "key-vault-retry-after-cap"
IDENTITY_HOOK = "identity-hook"
SERVER_REGISTRATION = "server-registration"
PROCESS_SWITCHES = "process-switches"
SYNTAX_REFUSAL = "transfer-syntax-refusal"
MOVE_ANSWER = "c-move-answer"
GET_ANSWER = "c-get-answer"
SUB_ASSOCIATION_CAUSE = "sub-association-cause"
BOUNDED_RECEIVE = "bounded-receive"
CONTEXT_COPY = "context-copy"
SHARED_CONTEXTS = "shared-contexts"
RECEIVED_COMMAND = "received-command"
PDATA_READ = "pdata-read"
DUL_QUEUES = "dul-queues"
ACCEPTOR_LOOP = "acceptor-loop"
NEGOTIATION_UIDS = "negotiation-uids"
ASSOCIATION_ITEMS = "association-items"
REQUESTOR_RESPONSES = "requestor-responses"
REQUESTOR_ACKS = "requestor-acks"
CONTEXT_LOOKUP = "context-lookup"
PROPOSAL_MEMO = "proposal-memo"
PROTOCOL_VERSION_REFUSAL = "protocol-version-refusal"
ECHO_SOP_CLASS = "c-echo-sop-class"

_RUN_ASSOCIATION = Site("pynetdicom.association:Association._run_reactor",
                        source="f28838c5559e462a")
_GET_MSG = Site("pynetdicom.dimse:DIMSEServiceProvider.get_msg", "(self, block=False)",
                "890e3e04283f5aeb")
_ASSOCIATION_INIT = Site("pynetdicom.association:Association.__init__", source="eb07516b8009ad8f")
_READ_PDU = Site("pynetdicom.dul:DULServiceProvider._read_pdu_data", "(self)", "19f2d4e38c13c835")
_ENCODE = ("(ds, is_implicit_vr, is_little_endian, deflated=False)", "0d29ffd5d358c45a")
_ENCODE_MSG = Site("pynetdicom.dimse_messages:DIMSEMessage.encode_msg", source="73000c902c52832d")
_SEND_MSG = Site("pynetdicom.dimse:DIMSEServiceProvider.send_msg",
                 "(self, primitive, context_id)", "a839cf2fb46976d9")
_ASSOCIATION_ENCODE = Site("pynetdicom.association:encode", *_ENCODE)
_SEND_C_STORE = Site("pynetdicom.association:Association.send_c_store", source="fa5a8127f349f8e7")
_SET_UID = ("(value, name, allow_empty=True, allow_none=True, validate=True)",
            "f917a8035170f792")
#: The modules that build A-ASSOCIATE PDU items, primitives and presentation contexts, each
#: calling pynetdicom's ``set_uid`` by its own module global.
_NEGOTIATION_MODULES = (pynetdicom.pdu_items, pynetdicom.pdu_primitives,
                        pynetdicom.presentation)
_CREATE_ASSOCIATION = Site("pynetdicom.transport:RequestHandler._create_association",
                           source="05c8d12b79863cdb")

PATCHES: tuple[Patch, ...] = (
    Patch(
        PDU_LENGTH_GUARD,
        "mimic_server.net.server:_GuardedAssociationSocket (class swap of each accepted socket)",
        "PDUs are read in 4 KiB pieces, the length a peer announces is not bounded, and a "
        "peer whose first PDU is not an A-ASSOCIATE-RQ holds its slot until the ACSE timeout",
        (PYNETDICOM,),
        (
            Site("pynetdicom.transport:AssociationSocket.recv",
                 "(self, nr_bytes)", "6bc20a33b1b7cfe7"),
            # builds the AssociationSocket whose class is swapped
            _CREATE_ASSOCIATION,
            _READ_PDU,  # reads a PDU body in one recv(length); OSError = connection closed
        ),
    ),
    Patch(
        IDLE_WAITS,
        "mimic_server.net.reactor:_EventDrivenDUL and _BellDIMSE (class swaps of each "
        "acceptor's DUL and DIMSE providers, and of their queues)",
        "each association's DUL thread and association thread wake every 1 ms, also while "
        "the association is idle (ten idle TLS associations: ~25% of a core), and each hand-off "
        "between them waits up to 1 ms",
        (PYNETDICOM,),
        (
            # replaced by a copy whose idle sleep is a poll on the socket and a wake-up
            Site("pynetdicom.dul:DULServiceProvider.run_reactor", source="e3a10eb3a0931e48"),
            # replaced for block=False (the reactor's look) by a wait on the bell
            _GET_MSG,
            # one get_msg(block=False) per turn, then release / abort / DUL alive / network
            # timer checks: what the bell and the timeout must cover
            _RUN_ASSOCIATION,
            # make the queues whose puts ring, and _kill_thread, whose setting rings
            Site("pynetdicom.dul:DULServiceProvider.__init__", source="c82dafa9438ddf70"),
            Site("pynetdicom.dimse:DIMSEServiceProvider.__init__", source="bbecd186810e7700"),
            Site("pynetdicom.dul:DULServiceProvider.kill_dul", "(self)", "5ceccf8dd01c2072"),
            Site("pynetdicom.dul:DULServiceProvider.stop_dul", "(self)", "28a7e0be126e7b30"),
            # extended: the network timer restarts as each PDU is queued to be sent
            Site("pynetdicom.dul:DULServiceProvider.send_pdu", "(self, primitive)",
                 "7cbce5da8594124e"),
            # reads when the socket is ready (select + SSLSocket.pending), closes in Sta13
            Site("pynetdicom.dul:DULServiceProvider._is_transport_event", "(self)",
                 "8725ed03bb8fbdef"),
            # stops the DUL (whose end rings the bell) before the association thread exits
            Site("pynetdicom.association:Association.kill", "(self)", "8f9713666a7f4cff"),
            _ASSOCIATION_INIT,  # makes the providers whose classes are swapped
        ),
    ),
    Patch(
        ACCEPT_WAITS,
        "mimic_server.net.server:MimicAssociationServer.serve_forever and shutdown (an "
        "accept loop that blocks on the listening socket and a wake-up)",
        "the accept loop wakes every 0.2 s (socketserver's poll_interval) and runs a full "
        "collection every 60 turns, also while nothing is accepted",
        (PYNETDICOM,),
        (
            # the loop's one service action, a gc.collect() every 60 turns, done on time here
            Site("pynetdicom.transport:AssociationServer.service_actions", "(self)",
                 "0a0853a3615ac7c5"),
            # socketserver's accept of one connection, called when the socket is readable
            Site("socketserver:BaseServer._handle_request_noblock", "(self)"),
            # what the replacement shutdown does after the loop ended: close, unregister
            Site("pynetdicom.transport:AssociationServer.shutdown", "(self)",
                 "e8e2c3a41009886d"),
        ),
    ),
    Patch(
        BOUNDED_RECEIVE,
        "mimic_server.dimse.receiving:receive_in_bounded_memory "
        "(wraps each acceptor's dimse.receive_primitive)",
        "every data set is held whole in memory while it arrives, and no size limit is "
        "enforced (MIMIC_MAX_OBJECT_BYTES is not applied)",
        (PYNETDICOM,),
        (
            # makes the DIMSEMessage whose data_set is replaced, and resets it when complete
            Site("pynetdicom.dimse:DIMSEServiceProvider.receive_primitive",
                 "(self, primitive)", "5f99c86b14a15cef"),
            # writes each data set fragment with data_set.write(...) as it arrives
            Site("pynetdicom.dimse_messages:DIMSEMessage.decode_msg",
                 "(self, primitive, assoc=None)", "f51c777e841a76be"),
            # hands that data_set to the request primitive (event.request.DataSet)
            Site("pynetdicom.dimse_messages:DIMSEMessage.message_to_primitive",
                 mentions="self.data_set"),
            # the DUL calls it through the association's dimse attribute (instance wrap)
            Site("pynetdicom.fsm:DT_2", mentions="dul.assoc.dimse.receive_primitive("),
        ),
    ),
    Patch(
        ACCEPTOR_LOOP,
        "mimic_server.net.reactor:_run_acceptor_turns (each acceptor association's "
        "_run_reactor, an instance attribute, where idle-waits is applied)",
        "the association thread sleeps 1 ms before each look at its message queue, so a "
        "request that arrives within 1 ms of the last response waits for the rest of it: "
        "about half a millisecond of every C-STORE from a fast sender, and of every C-ECHO "
        "(also off when idle-waits is)",
        (PYNETDICOM,),
        (
            # reproduced line for line without its time.sleep(0.001)
            _RUN_ASSOCIATION,
            # calls self._run_reactor() (the instance attribute) once established
            Site("pynetdicom.association:Association.run_reactor", "(self)",
                 mentions="self._run_reactor()"),
            # the look at the message queue that idle-waits makes a wait on the bell
            _GET_MSG,
        ),
    ),
    Patch(
        DUL_QUEUES,
        "mimic_server.net.reactor:simple_dul_queues (each acceptor DUL's event and "
        "received-PDU queues replaced by queue.SimpleQueue)",
        "every PDU is put on and taken from two queue.Queue objects in Python, under their "
        "locks and conditions, and every turn of the reactor that finds no event raises "
        "queue.Empty from one (2-4 % of the instructions of receiving a C-STORE)",
        (PYNETDICOM,),
        (
            # makes the two queues, as queue.Queue; the reactor's loop and its reader put to
            # and get(block=False) from them
            Site("pynetdicom.dul:DULServiceProvider.__init__", source="c82dafa9438ddf70"),
            Site("pynetdicom.dul:DULServiceProvider.run_reactor", source="e3a10eb3a0931e48"),
            Site("pynetdicom.dul:DULServiceProvider._process_recv_primitive", "(self)",
                 "4c0ebbb3e646e35e"),
            _READ_PDU,
            # the state machine's actions that take a received PDU: get(False) only
            *(Site(f"pynetdicom.fsm:{action}", "(dul)", digest) for action, digest in (
                ("AE_3", "78fa365f7915684e"), ("AE_4", "9174bacb68ff4db4"),
                ("AE_6", "385d595ed49432af"), ("DT_2", "9ec543394e0b49eb"),
                ("AR_2", "2cf6aeb89062e88d"), ("AR_3", "f1598039bd13e8ce"),
                ("AR_6", "4c7826acf846b4a7"), ("AR_8", "64e1b1487afe756e"),
                ("AR_10", "831bb6f5778776d9"), ("AA_3", "de64452e828d09da"),
                ("AA_6", "392575ec6b33cebf"))),
            # the transport's events (Evt5 before the swap, Evt17): put only, through the DUL's
            # attribute as it is at the time
            Site("pynetdicom.transport:AssociationSocket.__init__",
                 "(self, assoc, client_socket=None, address=None)", "1f0325fdef2cc353"),
            Site("pynetdicom.transport:AssociationSocket.event_queue.fget", "(self)",
                 "dfb0e894161db1ed"),
            Site("pynetdicom.transport:AssociationSocket.close", "(self)", "c726c8db53813d55"),
            Site("pynetdicom.transport:AssociationSocket.ready.fget", "(self)",
                 "3eb58e3d39dc076d"),
            Site("pynetdicom.transport:AssociationSocket.send", "(self, bytestream)",
                 "1ea8158c0b51faca"),
            # puts Evt19 for a message it cannot decode
            Site("pynetdicom.dimse:DIMSEServiceProvider.receive_primitive",
                 "(self, primitive)", "5f99c86b14a15cef"),
        ),
    ),
    Patch(
        PDATA_READ,
        "mimic_server.net.reactor:_EventDrivenDUL._decode_pdu and _read_pdu_data (an "
        "instance switch of the DUL that idle-waits swaps in)",
        "every PDU's body is copied once more as it is appended to its header (the read "
        "into one buffer needs pdu-length-guard's socket too), and every "
        "P-DATA-TF PDU is copied whole, decoded through pynetdicom's generic item classes "
        "and each PDV copied again before its fragment is written (also off when idle-waits "
        "is)",
        (PYNETDICOM,),
        (
            # overridden for P-DATA-TF: the events it triggers (skipped only when no handler
            # is bound), the PDU class and FSM event it picks
            Site("pynetdicom.dul:DULServiceProvider._decode_pdu", "(self, bytestream)",
                 "fc71dd1bf853e1ce"),
            # what a P-DATA-TF decode accepts and yields, reproduced
            Site("pynetdicom.pdu:P_DATA_TF._generate_items", source="55a5deea47745b72"),
            Site("pynetdicom.pdu:P_DATA_TF.decode", source="07098f2d8a4d45e4"),
            # the one method of the PDU the state machine uses, reproduced
            Site("pynetdicom.pdu:P_DATA_TF.to_primitive", source="3cba1cd31f03fdf0"),
            Site("pynetdicom.fsm:DT_2", mentions="pdu.to_primitive()"),
            # hands _decode_pdu the whole PDU, header included, as a bytearray; reproduced
            # with the body read after the header (with pdu-length-guard's socket)
            _READ_PDU,
        ),
    ),
    Patch(
        RECEIVED_COMMAND,
        "mimic_server.dimse.receiving:_receive_store_fragments and "
        "mimic_server.codec.command_set:decode_store_request, decode_store_response (inside "
        "bounded-receive's wrapper of each acceptor's dimse.receive_primitive)",
        "every C-STORE-RQ's command set, and every C-STORE-RSP to a C-GET sub-operation, is "
        "decoded by pydicom into a Dataset and copied element by element, each UID validated "
        "three times, into the primitive, and every data set fragment is copied once more "
        "before it is written (also off when bounded-receive is)",
        (PYNETDICOM, PYDICOM),
        (
            # reproduced for a plain C-STORE-RQ: command fragments into encoded_command_set,
            # the class swap, data set fragments into data_set, complete at the last one
            Site("pynetdicom.dimse_messages:DIMSEMessage.decode_msg",
                 "(self, primitive, assoc=None)", "f51c777e841a76be"),
            # reproduced on completion: EVT_DIMSE_RECV, the primitive put on msg_queue with
            # its context ID, the message reset
            Site("pynetdicom.dimse:DIMSEServiceProvider.receive_primitive",
                 "(self, primitive)", "5f99c86b14a15cef"),
            # the request primitive it builds: Message ID, UIDs, Priority, DataSet, context
            Site("pynetdicom.dimse_messages:DIMSEMessage.message_to_primitive",
                 source="f8f43d34e43450ef"),
            # the private attributes the UIDs are written to, after the same checks
            Site("pynetdicom.dimse_primitives:DIMSEPrimitive.AffectedSOPClassUID.fset",
                 source="f9bdd6340986b88f"),
            Site("pynetdicom.dimse_primitives:DIMSEPrimitive._AffectedSOPInstanceUID.fset",
                 source="45292a0e9b98f976"),
            # the DUL hands each P-DATA to the association's dimse attribute (instance wrap)
            Site("pynetdicom.fsm:DT_2", mentions="dul.assoc.dimse.receive_primitive("),
            # replaced, as the name the primitives' UID setters call, by one that takes a
            # UID checked on decoding as checked (the response copies the request's UIDs)
            Site("pynetdicom.dimse_primitives:set_uid",
                 "(value, name, allow_empty=True, allow_none=True, validate=True)",
                 "f917a8035170f792"),
        ),
    ),
    Patch(
        COMMAND_SET_ENCODER,
        "mimic_server.codec.command_set:command_set_encoder "
        "(replaces pynetdicom.dimse_messages.encode)",
        "every command set is encoded by pydicom",
        (PYNETDICOM, PYDICOM),
        (
            Site("pynetdicom.dimse_messages:encode", *_ENCODE),
            _ENCODE_MSG,  # calls encode(command_set, True, True) by its module global
            Site("pynetdicom.dimse_messages:DIMSEMessage._set_command_group_length",
                 source="c3057c97344d5db3"),
        ),
    ),
    Patch(
        DIRECT_RESPONSES,
        "mimic_server.codec.command_set:direct_response_sender "
        "(replaces DIMSEServiceProvider.send_msg)",
        "each C-STORE / C-FIND response is built as a Dataset and encoded twice by pydicom",
        (PYNETDICOM, PYDICOM),
        (
            _SEND_MSG,
            _ENCODE_MSG,  # its fragmentation is reproduced
            Site("pynetdicom.dimse_messages:DIMSEMessage.primitive_to_message",
                 source="71fd61d5997f0f0c"),  # the elements it writes are reproduced
        ),
    ),
    Patch(
        PDATA_BATCHES,
        "mimic_server.net.pdata_batches:sending_batches (wraps the state machine's DT-1 and "
        "AR-7 actions) with mimic_server.codec.command_set:EncodedPData, made by "
        "direct_response_sender",
        "every PDU of a message is one turn of the DUL thread: a C-STORE sub-operation of a "
        "0.5 MB object to a peer of 16 KiB PDUs is 33 turns and writes",
        (PYNETDICOM,),
        (
            # each takes the P-DATA off the queue, sends P_DATA_TF(primitive) by _send and
            # returns its next state: repeated for anything not encoded ahead
            Site("pynetdicom.fsm:DT_1", source="82e5c5d4114534fa"),
            Site("pynetdicom.fsm:AR_7", source="9a8d68182bf5c9fd"),
            # writes pdu.encode() and triggers EVT_PDU_SENT, which a batch does not
            Site("pynetdicom.dul:DULServiceProvider._send", "(self, pdu)", "a850a7919e68484e"),
            # a batch is written as it writes (EVT_DATA_SENT, Evt17), without its copies
            Site("pynetdicom.transport:AssociationSocket.send", "(self, bytestream)",
                 "1ea8158c0b51faca"),
            # looks the action up in ACTIONS at each event, where the wrappers are put
            Site("pynetdicom.fsm:StateMachine.do_action", mentions="ACTIONS[action_name]"),
            # the PDU and PDV encodings a batch reproduces byte for byte
            Site("pynetdicom.pdu:P_DATA_TF", source="6fdbc751c92b9874"),
            Site("pynetdicom.pdu_items:PresentationDataValueItem", source="93b5c1a17ae3c443"),
            _SEND_MSG,
            _ENCODE_MSG,  # its fragmentation is reproduced
            Site("pynetdicom.dimse_messages:DIMSEMessage.primitive_to_message",
                 source="71fd61d5997f0f0c"),  # the elements it writes are reproduced
        ),
    ),
    Patch(
        ANSWER_ENCODER,
        "mimic_server.codec.command_set:answer_encoder (replaces pynetdicom.service_class.encode)",
        "every C-FIND answer is built as a Dataset and encoded by pydicom",
        (PYNETDICOM, PYDICOM),
        (
            Site("pynetdicom.service_class:encode", *_ENCODE),
            # encodes each pending Identifier through that module global
            Site("pynetdicom.service_class:QueryRetrieveServiceClass._c_find_scp",
                 source="da242b908ef4848c"),
        ),
    ),
    Patch(
        STORED_BYTES_SEND,
        "mimic_server.dimse.raw_send:stored_bytes_encoder (replaces pynetdicom.association.encode)",
        "C-GET / C-MOVE sub-operations send objects re-encoded by pydicom, not as stored",
        (PYNETDICOM, PYDICOM),
        (
            _ASSOCIATION_ENCODE,
            _SEND_C_STORE,  # encodes each sub-operation's data set through that module global
        ),
    ),
    Patch(
        ANSWERED_SEND,
        "mimic_server.dimse.raw_send:answered_send (wraps Association.send_c_store)",
        "the audit trail of C-GET / C-MOVE counts what pynetdicom encoded as transferred: an "
        "object the destination refused, or that was cut off midway, included",
        (PYNETDICOM,),
        (
            _SEND_C_STORE,  # returns the response's status Dataset (empty: no response)
            # each yielded dataset is sent by send_c_store before the next is asked for
            Site("pynetdicom.service_class:QueryRetrieveServiceClass._get_scp",
                 mentions="self.assoc.send_c_store(dataset"),
            Site("pynetdicom.service_class:QueryRetrieveServiceClass._move_scp",
                 mentions="store_assoc.send_c_store("),
        ),
    ),
    Patch(
        STREAMED_SEND,
        "mimic_server.dimse.stream_send:streamed_encoder and streamed_sender (wrap "
        "pynetdicom.association.encode and DIMSEServiceProvider.send_msg)",
        "C-GET / C-MOVE sub-operations hold each object whole in memory, twice over for one "
        "above 8 MiB (its bytes and every P-DATA fragment queued at once)",
        (PYNETDICOM, PYDICOM),
        (
            # puts each P-DATA on dul.to_provider_queue, whose length is the back-pressure
            Site("pynetdicom.dul:DULServiceProvider.send_pdu",
                 "(self, primitive)", "7cbce5da8594124e"),
            # takes each P-DATA off with get(), which notifies the queue's not_full
            Site("pynetdicom.fsm:DT_1", mentions="dul.to_provider_queue.get(False)"),
            # the empty data set made by the encoder is wrapped in BytesIO, then send_msg
            # is called in the same thread; a missing response (None) fails the sub-operation
            _ASSOCIATION_ENCODE,
            _SEND_C_STORE,
            _SEND_MSG,  # its event and command set are reproduced, its fragments streamed
            _ENCODE_MSG,  # yields the command set only when the data set is empty
            # the peer's maximum PDU length, which cuts the fragments
            Site("pynetdicom.dimse:DIMSEServiceProvider.maximum_pdu_size.fget",
                 source="600fc7073d35ccd6"),
        ),
    ),
    Patch(
        REQUESTOR_RESPONSES,
        "mimic_server.net.requestor:keep_responses (class swap of each C-MOVE "
        "sub-association's DIMSE provider, and its reactor checkpoint replaced)",
        "under load a C-MOVE sub-association's own thread may take a C-STORE response off "
        "the queue and drop it (pynetdicom issue 875): the sub-operation waits out the DIMSE "
        "timeout, then the sub-association is aborted and the rest of the C-MOVE fails",
        (PYNETDICOM,),
        (
            # the association thread: sets _is_paused, waits on the checkpoint, clears
            # _is_paused, then one get_msg(block=False), the look that is guarded
            _RUN_ASSOCIATION,
            # overridden for block=False only; block=True is the sender's wait
            _GET_MSG,
            # the sender: clears the checkpoint before it sends, sets it once answered
            _SEND_C_STORE,
            # makes the checkpoint (an Event, set) that is replaced
            _ASSOCIATION_INIT,
            # requests (EVT_ESTABLISHED, where the guard is applied) before assoc.start()
            Site("pynetdicom.ae:ApplicationEntity.associate", source="dbc8cf47090386b2"),
            Site("pynetdicom.association:Association.request", "(self)", "928cd0e3013c9ab9"),
            Site("pynetdicom.acse:ACSE._negotiate_as_requestor", mentions="EVT_ESTABLISHED"),
        ),
    ),
    Patch(
        REQUESTOR_ACKS,
        "mimic_server.net.acknowledge:AcknowledgingSocket (class swap of each C-MOVE "
        "sub-association's socket)",
        "a C-MOVE destination with Nagle's algorithm on (dcmtk without TCP_NODELAY=1) holds "
        "back the tail of each C-STORE-RSP until the kernel's delayed ACK: some 40 ms a "
        "sub-operation",
        (PYNETDICOM,),
        (
            # the reads overridden, each called for a PDU's header, then for its body
            Site("pynetdicom.transport:AssociationSocket.recv",
                 "(self, nr_bytes)", "6bc20a33b1b7cfe7"),
            _READ_PDU,
            # requests (EVT_ESTABLISHED, where the class is swapped) before assoc.start()
            Site("pynetdicom.ae:ApplicationEntity.associate", source="dbc8cf47090386b2"),
            Site("pynetdicom.association:Association.request", "(self)", "928cd0e3013c9ab9"),
            Site("pynetdicom.acse:ACSE._negotiate_as_requestor", mentions="EVT_ESTABLISHED"),
        ),
    ),
    Patch(
        RETRY_AFTER_CAP,
        "mimic_server.certs.vaulthttp:BoundedRetryPolicy (overrides RetryPolicy._sleep_for_retry)",
        "a Key Vault refresh obeys any Retry-After, however long",
        (AZURE_CORE,),
        (
            Site("azure.core.pipeline.policies:RetryPolicy._sleep_for_retry",
                 "(self, response, transport)", "e60fb9e62dd39f26"),
            Site("azure.core.pipeline.policies:RetryPolicy.sleep",
                 source="ec053b02188da6f7"),  # its only caller
        ),
    ),
    Patch(
        MOVE_ANSWER,
        "mimic_server.dimse.move_answer:answering_move_scp "
        "(wraps QueryRetrieveServiceClass._move_scp)",
        "C-MOVE refusals (not authorized, bad Identifier) and an unreachable destination are "
        "all answered 0xA801 Move Destination unknown",
        (PYNETDICOM,),
        (
            Site("pynetdicom.service_class:QueryRetrieveServiceClass._move_scp",
                 "(self, req, context)", "5c14d1be3d737bef"),
        ),
    ),
    Patch(
        GET_ANSWER,
        "mimic_server.dimse.get_answer:answering_get_scp "
        "(wraps QueryRetrieveServiceClass._get_scp)",
        "a refused C-GET (not authorized, bad Identifier, index unavailable) is answered with "
        "Number of Failed Sub-operations 1 and an empty Failed SOP Instance UID List, though "
        "no sub-operation existed",
        (PYNETDICOM,),
        (
            # a handler's failure after its count is answered with the counts and an
            # Identifier, through self.dimse.send_msg, as the one final C-GET response
            Site("pynetdicom.service_class:QueryRetrieveServiceClass._get_scp",
                 "(self, req, context)", "8ca1538e3e56c4f7"),
        ),
    ),
    Patch(
        SUB_ASSOCIATION_CAUSE,
        "mimic_server.dimse.move_attempt:Attempt.tls (a C-MOVE's tls_args context, whose "
        "wrapped socket notes its connect error)",
        "the WARNING for a TLS C-MOVE destination that cannot be reached says only that no "
        "connection was made, not the handshake's reason (name mismatch, unknown CA, not TLS)",
        (PYNETDICOM,),
        (
            # uses tls_args' context only as context.wrap_socket(...), then connects the
            # socket it returns; catches the OSError and keeps it to its own logger
            Site("pynetdicom.transport:AssociationSocket.connect",
                 "(self, primitive)", "aeeeae413bd339dc"),
        ),
    ),
    Patch(
        IDENTITY_HOOK,
        "mimic_server.net.server:_RequestHandler._create_association "
        "(attaches the TLS identity and the per-association patches)",
        "no association would get its peer's identity: every one would be refused",
        (PYNETDICOM,),
        (Site("pynetdicom.transport:RequestHandler._create_association", "(self)"),),
        required=True,
    ),
    Patch(
        SERVER_REGISTRATION,
        "mimic_server.patches:Fence.register_server (ae._servers, as AE.start_server does)",
        "ThreadedAssociationServer.shutdown() would fail removing an unregistered server",
        (PYNETDICOM,),
        (
            Site("pynetdicom.ae:ApplicationEntity.__init__", mentions="self._servers"),
            Site("pynetdicom.transport:ThreadedAssociationServer.shutdown",
                 mentions="self.ae._servers.remove"),
        ),
        required=True,
    ),
    Patch(
        PROTOCOL_VERSION_REFUSAL,
        "mimic_server.dimse.protocol_version:admitting (replaces the state machine's AE-6 "
        "action)",
        "an A-ASSOCIATE-RQ whose Protocol Version is not 0x0001 is rejected by pynetdicom "
        "itself (1/2/2), neither logged nor audited, and one that also announces a later "
        "version is rejected although bit 0 is set",
        (PYNETDICOM,),
        (
            # stops ARTIM, takes the PDU off _recv_pdu, tests protocol_version, sends the RJ
            # itself or puts the primitive on to_user_queue: the acceptable path reproduced
            Site("pynetdicom.fsm:AE_6", "(dul)", "385d595ed49432af"),
            # looks the action up in ACTIONS at each event, where the replacement is put
            Site("pynetdicom.fsm:StateMachine.do_action", mentions="ACTIONS[action_name]"),
            # the indication becomes EVT_REQUESTED, where admission rejects it
            Site("pynetdicom.association:Association.run_reactor", "(self)",
                 mentions="evt.EVT_REQUESTED"),
        ),
    ),
    Patch(
        ECHO_SOP_CLASS,
        "mimic_server.dimse.echo:answering_echo (wraps Association._serve_request)",
        "a C-ECHO whose Affected SOP Class UID is not Verification's (a storage class, an "
        "unknown UID) aborts the association, with no log line",
        (PYNETDICOM,),
        (
            # picks the service class by the Affected SOP Class UID, skips a request during
            # release and aborts one on a context not accepted (_accepted_cx): the wrapper
            # answers only a C-ECHO it would have served
            Site("pynetdicom.association:Association._serve_request",
                 "(self, msg, context_id)", "2f24c1759cdf6c8c"),
        ),
    ),
    Patch(
        SYNTAX_REFUSAL,
        "mimic_server.dimse.syntax_refusal:refusing_negotiation "
        "(wraps pynetdicom.acse.negotiate_unrestricted)",
        "storage contexts in any transfer syntax would be accepted, also those the archive "
        "cannot index or send back",
        (PYNETDICOM,),
        (
            Site("pynetdicom.acse:negotiate_unrestricted",
                 "(rq_contexts, ac_contexts, roles=None)", "344f31fc8c738793"),
            # calls it by its module global, for the unrestricted storage service
            Site("pynetdicom.acse:ACSE._negotiate_as_acceptor",
                 mentions="negotiate_unrestricted("),
        ),
        required=True,
    ),
    Patch(
        CONTEXT_COPY,
        "mimic_server.net.contexts:copying (the name deepcopy of pynetdicom.transport)",
        "every new association deep-copies the server's 177 presentation contexts (6,488 "
        "transfer syntax UIDs, each validated again): 40-80 ms of the GIL per association",
        (PYNETDICOM,),
        (
            # the attributes a context has, which copy_contexts copies
            Site("pynetdicom.presentation:PresentationContext.__init__",
                 "(self)", "37a8842ac07cd8f3"),
            # its one deepcopy: assoc.acceptor.supported_contexts = deepcopy(server.contexts)
            _CREATE_ASSOCIATION,
        ),
    ),
    Patch(
        SHARED_CONTEXTS,
        "mimic_server.net.contexts:shared_contexts (the listener's contexts, through "
        "Fence.listener_contexts; context-copy's deepcopy gives each association a new list "
        "of them)",
        "each association gets a copy of the listener's 177 contexts (context-copy's: 0.2 ms "
        "alone, 0.4-0.9 ms of an association's server CPU)",
        (PYNETDICOM,),
        (
            # the acceptor's only readers of its contexts, which read and never change them
            Site("pynetdicom.presentation:negotiate_as_acceptor",
                 "(rq_contexts, ac_contexts, roles=None)", "d5413f08f0ac7b32"),
            Site("pynetdicom.presentation:negotiate_unrestricted",
                 "(rq_contexts, ac_contexts, roles=None)", "344f31fc8c738793"),
            Site("pynetdicom.acse:ACSE._negotiate_as_acceptor", source="fffd360957c42a8e"),
            # the way they go there, kept as given (the acceptor's supported_contexts)
            _CREATE_ASSOCIATION,
            Site("pynetdicom.association:ServiceUser.supported_contexts.fset",
                 "(self, value)", "ae568e1770b7e5ec"),
            Site("pynetdicom.association:ServiceUser.supported_contexts.fget", "(self)",
                 "628055124a069682"),
            Site("pynetdicom.association:ServiceUser.get_contexts", "(self, cx_type)",
                 "0e14d47677a204d9"),
        ),
    ),
    Patch(
        CONTEXT_LOOKUP,
        "mimic_server.net.contexts:remembering_lookup (wraps "
        "Association._get_valid_context)",
        "each C-STORE sub-operation of a C-GET / C-MOVE sorts and filters every accepted "
        "presentation context again to find its own (getscu proposes ~120): about 40 us of "
        "the GIL a sub-operation",
        (PYNETDICOM,),
        (
            # a function of its arguments and of _accepted_cx, through accepted_contexts
            Site("pynetdicom.association:Association._get_valid_context",
                 "(self, ab_syntax, tr_syntax, role=None, context_id=None, "
                 "allow_conversion=True)", "117a52c2ae6720e0"),
            Site("pynetdicom.association:Association.accepted_contexts.fget", "(self)",
                 "f35e6c825dba292c"),
            # the accepted contexts are set, then the association established, once
            Site("pynetdicom.acse:ACSE._negotiate_as_acceptor", mentions="_accepted_cx = {"),
            Site("pynetdicom.acse:ACSE._negotiate_as_requestor", mentions="_accepted_cx = {"),
        ),
    ),
    Patch(
        NEGOTIATION_UIDS,
        "mimic_server.net.known_uids:known_uid_setter (the name set_uid of pynetdicom's "
        "pdu_items, pdu_primitives and presentation) and known_syntax_adder (wraps "
        "PresentationContext.add_transfer_syntax)",
        "every association builds and validates each proposed abstract and transfer syntax "
        "UID again, several times over (storescu's 128 contexts: ~2,300 pydicom UIDs and "
        "~4,000 regular expression matches, about half of the association's set-up CPU)",
        (PYNETDICOM, PYDICOM),
        (
            # the function remembered: same value, same result; conformant = no error, no log
            Site("pynetdicom.utils:set_uid", *_SET_UID),
            # the names the replacement is installed as (each still pynetdicom's set_uid)
            *(Site(f"{module.__name__}:set_uid", *_SET_UID) for module in _NEGOTIATION_MODULES),
            # appends UID(syntax) once, warning only for non-conformant or non-syntax UIDs
            Site("pynetdicom.presentation:PresentationContext.add_transfer_syntax",
                 "(self, syntax)", "83bb818ef65a6968"),
            # the pydicom UID it builds: validated by text, stripped, private encoding copied
            Site("pydicom.uid:UID.__new__", "(cls, val, validation_mode=None)",
                 "608d4e34f388481f"),
        ),
    ),
    Patch(
        ASSOCIATION_ITEMS,
        "mimic_server.net.association_items (decode and encode of pynetdicom's abstract and "
        "transfer syntax sub-items and presentation context RQ / AC items)",
        "each A-ASSOCIATE-RQ item is decoded and each A-ASSOCIATE-AC item encoded through "
        "field lists built per item (storescu's 128 contexts: 1.35 ms to decode the request, "
        "1.2 ms to build and encode the answer, ~20 % of an association's set-up)",
        (PYNETDICOM,),
        (
            # the methods replaced (inherited from PDUItem: a release that gives one of these
            # classes its own changes the digest), and the field lists they stand for
            *(Site(f"pynetdicom.pdu_items:{name}.{method}", signature, digest)
              for name in ("AbstractSyntaxSubItem", "TransferSyntaxSubItem")
              for method, signature, digest in (
                  ("decode", "(self, bytestream)", "c584b1b15f1b7d1e"),
                  ("encode", "(self)", "083e484443576a78"))),
            Site("pynetdicom.pdu_items:PresentationContextItemRQ.decode",
                 "(self, bytestream)", "c584b1b15f1b7d1e"),
            Site("pynetdicom.pdu_items:PresentationContextItemAC.encode",
                 "(self)", "083e484443576a78"),
            # the helpers the field lists name, whose work the replacements write out
            *(Site(f"pynetdicom.pdu_items:PDUItem.{helper}", signature, digest)
              for helper, signature, digest in (
                  ("_wrap_uid_bytes", "(bytestream)", "381ae3657b4e0a5f"),
                  ("_wrap_unpack", "(bytestream, unpacker)", "154d0051a74fa095"),
                  ("_wrap_pack", "(value, packer)", "032d916a69fd18e5"),
                  ("_wrap_encode_str", "(value)", "84143c223e2bbac9"),
                  ("_wrap_encode_items", "(items)", "017ddaeff063d8a5"))),
            Site("pynetdicom.pdu_items:PDUItem.item_type.fget", "(self)", "ecc04aa194059d93"),
            *(Site(f"pynetdicom.pdu_items:{target}", "(self)", digest) for target, digest in (
                ("AbstractSyntaxSubItem._decoders.fget", "804202481ad19150"),
                ("AbstractSyntaxSubItem._encoders.fget", "cabefd757c0f55d7"),
                ("AbstractSyntaxSubItem.item_length.fget", "6bf2b6a356d117cb"),
                ("TransferSyntaxSubItem._decoders.fget", "509b36598da3d998"),
                ("TransferSyntaxSubItem._encoders.fget", "253acf7b53b3a4fc"),
                ("TransferSyntaxSubItem.item_length.fget", "8d0203bad844e5c9"),
                ("PresentationContextItemRQ._decoders.fget", "f4e6866ef4631e87"),
                ("PresentationContextItemAC._encoders.fget", "cee31403fb88e441"),
                ("PresentationContextItemAC.item_length.fget", "aa8a7ec2db8fbebf"),
            )),
        ),
    ),
    Patch(
        PROPOSAL_MEMO,
        "mimic_server.net.proposals:remembering_items (A_ASSOCIATE_RQ._wrap_generate_items) "
        "and remembering_converter (wraps PresentationContextItemRQ.to_primitive)",
        "every association decodes each proposed presentation context item and builds its "
        "context again, though a requestor proposes the same ones each time (storescu's "
        "128: about 0.8 ms of an association's set-up)",
        (PYNETDICOM,),
        (
            # the loop replaced: a new item of its type for each item's bytes, then decode
            Site("pynetdicom.pdu:PDU._wrap_generate_items", "(self, bytestream)",
                 "17e05aa8e1a1bc30"),
            # what a decoded item holds: its ID and its sub-items, nothing else
            Site("pynetdicom.pdu_items:PresentationContextItemRQ.__init__", "(self)",
                 "c6cfd3178cd0bfee"),
            # a function of the item's ID and sub-items, remembered per item
            Site("pynetdicom.pdu_items:PresentationContextItemRQ.to_primitive", "(self)",
                 "820a8752cc816f2c"),
            # the attributes of the context it makes, which copy_plain copies
            Site("pynetdicom.presentation:PresentationContext.__init__",
                 "(self)", "37a8842ac07cd8f3"),
        ),
    ),
    Patch(
        PROCESS_SWITCHES,
        "mimic_server.patches:_set_process_switches (pynetdicom._config)",
        "pynetdicom's log handlers, identifier logging and storage SOP class limits would stay",
        (PYNETDICOM,),
        tuple(
            Site(f"pynetdicom._config:{name}")
            for name in (
                "LOG_HANDLER_LEVEL", "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS",
                "UNRESTRICTED_STORAGE_SERVICE",
            )
        ),
        required=True,
    ),
)


def source_digest(obj: Any) -> str:
    """The first 16 hex digits of the SHA-256 of an object's source text."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def shape(obj: Any) -> str:
    """A callable's parameters, names, kinds and defaults, without annotations: ``(self, n)``."""
    signature = inspect.signature(obj)
    empty = inspect.Parameter.empty
    bare = [p.replace(annotation=empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=empty))


def resolve(target: str) -> Any:
    """The library object a site names, seen through any replacement the fence installed."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    while hasattr(obj, ORIGINAL):
        obj = getattr(obj, ORIGINAL)
    return obj


def site_problem(site: Site) -> str | None:
    """Why ``site`` is not as verified, or None when it is."""
    try:
        obj = resolve(site.target)
    except (ImportError, AttributeError):
        return f"{site.target} not found"
    if site.signature is not None:
        try:
            found = shape(obj)
        except (TypeError, ValueError):
            return f"{site.target} has no signature"
        if found != site.signature:
            return f"{site.target} signature is {found}, verified {site.signature}"
    if site.source is not None:
        try:
            digest = source_digest(obj)
        except (OSError, TypeError):
            return f"{site.target} source unavailable"
        if digest != site.source:
            return f"{site.target} source changed (sha256 {digest}, verified {site.source})"
    if site.mentions is not None:
        try:
            text = inspect.getsource(obj)
        except (OSError, TypeError):
            return f"{site.target} source unavailable"
        if site.mentions not in text:
            return f"{site.target} no longer uses {site.mentions}"
    return None


def check(patch: Patch) -> str | None:
    """The first call site of ``patch`` that is not as verified, or None."""
    for site in patch.sites:
        problem = site_problem(site)
        if problem is not None:
            return problem
    return None


def installed(verified: tuple[tuple[str, str], ...]) -> str:
    """The installed versions of the libraries a patch was verified on: ``pynetdicom 3.1.0``."""
    found = []
    for distribution, _ in verified:
        try:
            found.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            found.append(f"{distribution} (not installed)")
    return ", ".join(found)


def versions(verified: tuple[tuple[str, str], ...]) -> str:
    """The versions a patch was verified on: ``pynetdicom 3.0.4, pydicom 3.0.2``."""
    return ", ".join(f"{name} {version}" for name, version in verified)


@dataclass(frozen=True)
class Fence:
    """What :func:`apply` decided: the patches applied, and why each other one was not."""

    applied: frozenset[str]
    skipped: dict[str, str] = field(default_factory=dict)

    def association_adapter(
        self, max_pdu_read: int, receive_limits: receiving.ReceiveLimits | None = None
    ) -> Callable[[Any], None]:
        """The per-association patches, for ``MimicAssociationServer(adapt_association=)``:
        applied to each new acceptor association before it starts."""
        steps: list[Callable[[Any], None]] = []
        if BOUNDED_RECEIVE in self.applied and receive_limits is not None:
            store_requests = RECEIVED_COMMAND in self.applied
            steps.append(lambda assoc: receiving.receive_in_bounded_memory(
                assoc, receive_limits, store_requests))
        if PDU_LENGTH_GUARD in self.applied:
            steps.append(lambda assoc: server.guard_pdu_reads(assoc, max_pdu_read))
        if DUL_QUEUES in self.applied:
            steps.append(reactor.simple_dul_queues)
        if IDLE_WAITS in self.applied:
            steps.append(reactor.wait_for_events)
            if PDATA_READ in self.applied:
                steps.append(reactor.read_pdata)
            if ACCEPTOR_LOOP in self.applied:
                steps.append(reactor.run_without_sleep)

        def adapt(assoc: Any) -> None:
            for step in steps:
                step(assoc)

        return adapt

    @property
    def requestor_adapter(self) -> Callable[[Any], None] | None:
        """Applied to each requestor association MIMIC opens (a C-MOVE sub-association) as it
        is established: ``requestor-responses`` and ``requestor-acks``, those applied; None
        where neither was."""
        adapters = tuple(adapt for name, adapt in (
            (REQUESTOR_RESPONSES, requestor.keep_responses),
            (REQUESTOR_ACKS, acknowledge.acknowledge_reads),
        ) if name in self.applied)
        return functools.partial(_adapt_with, adapters) if adapters else None

    def listener_contexts(self, supported: list[Any]) -> Sequence[Any]:
        """The presentation contexts for ``MimicAssociationServer(contexts=)``: shared by
        every association, unchangeable, where ``shared-contexts`` and ``context-copy`` are
        applied (the association is then given a new list of them, not copies); else
        ``supported``, which each association gets a copy of."""
        if CONTEXT_COPY in self.applied and SHARED_CONTEXTS in self.applied:
            shared = contexts.shared_contexts(supported)
            if shared is not None:
                return shared
        return supported

    @property
    def event_driven_accept(self) -> bool:
        """For ``MimicAssociationServer(event_driven_accept=)``."""
        return ACCEPT_WAITS in self.applied

    def register_server(self, ae: Any, listener: Any) -> None:
        """Register a server MIMIC built itself with its AE, as ``AE.start_server`` does, so
        that ``ae.shutdown()`` and ``listener.shutdown()`` work."""
        ae._servers.append(listener)


def _adapt_with(adapters: tuple[Callable[[Any], None], ...], assoc: Any) -> None:
    for adapt in adapters:
        adapt(assoc)


def apply() -> Fence:
    """Check every patch against the installed libraries and apply those that match.

    Raises ConfigurationError when a required patch's call site has changed. Safe to call
    again in one process (tests start many archives): a replacement is installed once.
    """
    problems = {patch.name: check(patch) for patch in PATCHES}
    for name in _turned_off():
        problems[name] = problems[name] or f"turned off by {PATCHES_OFF}"
    for patch in PATCHES:  # nothing is applied when the start cannot go on
        problem = problems[patch.name]
        if patch.required and problem is not None:
            raise ConfigurationError(
                f"{installed(patch.verified)}: {problem}; MIMIC needs it ({patch.name}: "
                f"{patch.without}). It was verified on {versions(patch.verified)}: "
                "install with -c constraints.txt"
            )
    applied: set[str] = set()
    skipped: dict[str, str] = {}
    for patch in PATCHES:
        problem = problems[patch.name]
        if problem is None:
            _APPLY.get(patch.name, _nothing)()
            applied.add(patch.name)
            continue
        _FALLBACK.get(patch.name, _nothing)()
        skipped[patch.name] = problem
        log.warning(
            "library patch not applied: its call site changed, the library's own path runs",
            extra={
                "patch": patch.name, "found": installed(patch.verified),
                "verified": versions(patch.verified), "site": problem,
                "without": patch.without,
            },
        )
    log.info(
        "library patches",
        extra={
            "applied": sorted(applied), "skipped": sorted(skipped),
            "found": installed((PYNETDICOM, PYDICOM, AZURE_CORE)),
        },
    )
    return Fence(frozenset(applied), skipped)


def _turned_off() -> set[str]:
    """The speed-up patches :data:`PATCHES_OFF` names; ConfigurationError for any other."""
    names = {n.strip() for n in os.environ.get(PATCHES_OFF, "").split(",") if n.strip()}
    speed_ups = {patch.name for patch in PATCHES if not patch.required}
    unknown = names - speed_ups
    if unknown:
        raise ConfigurationError(
            f"{PATCHES_OFF} names {', '.join(sorted(unknown))}: not a patch that can be left "
            f"off (those are {', '.join(sorted(speed_ups))})"
        )
    return names


def _nothing() -> None:
    """Per-association patches are applied by :meth:`Fence.association_adapter`."""


def _wrap(owner: Any, name: str, make: Callable[[Any], Any], patch: str) -> None:
    """Replace ``owner.name`` by ``make(current)``, once per patch: the replacement records
    what it replaced and for which patch, so a second call in one process (and
    :func:`resolve`) sees through it, and another patch may wrap it again."""
    current = getattr(owner, name)
    link = current
    while link is not None:
        if getattr(link, PATCH_NAME, None) == patch:
            return
        link = getattr(link, ORIGINAL, None)
    replacement = make(current)
    setattr(replacement, ORIGINAL, current)
    setattr(replacement, PATCH_NAME, patch)
    setattr(replacement, INHERITED, name not in vars(owner))
    setattr(owner, name, replacement)


def _unwrap(owner: Any, name: str, patch: str) -> None:
    """Undo :func:`_wrap` of ``patch`` where an earlier start installed it outermost."""
    current = vars(owner).get(name)
    if getattr(current, PATCH_NAME, None) != patch:
        return
    if getattr(current, INHERITED, False):
        delattr(owner, name)  # the base class's function shows through again
    else:
        setattr(owner, name, getattr(current, ORIGINAL))


def _received_command(enabled: bool = True) -> None:
    if enabled:
        _wrap(pynetdicom.dimse_primitives, "set_uid", command_set.checked_uid_setter,
              RECEIVED_COMMAND)
        return
    _unwrap(pynetdicom.dimse_primitives, "set_uid", RECEIVED_COMMAND)


def _command_set_encoder() -> None:
    _wrap(pynetdicom.dimse_messages, "encode", command_set.command_set_encoder,
          COMMAND_SET_ENCODER)


def _direct_responses() -> None:
    _wrap(DIMSEServiceProvider, "send_msg", command_set.direct_response_sender,
          DIRECT_RESPONSES)


def _pdata_batches(enabled: bool = True) -> None:
    for key, name, state in (("DT-1", "DT_1", "Sta6"), ("AR-7", "AR_7", "Sta8")):
        if enabled:
            _wrap(pynetdicom.fsm, name, pdata_batches.sending_batches(state), PDATA_BATCHES)
        else:
            _unwrap(pynetdicom.fsm, name, PDATA_BATCHES)
        description, _, next_state = pynetdicom.fsm.ACTIONS[key]
        pynetdicom.fsm.ACTIONS[key] = (description, getattr(pynetdicom.fsm, name), next_state)
    # Only once the actions can send them does the sender make batches.
    command_set.batches = enabled


def _answer_encoder(enabled: bool = True) -> None:
    if enabled:
        _wrap(pynetdicom.service_class, "encode", command_set.answer_encoder, ANSWER_ENCODER)
    # Without the encoder, answers must be whole Datasets for pynetdicom's own to write.
    answer.self_encoding = enabled


def _stored_bytes_send() -> None:
    _wrap(pynetdicom.association, "encode", raw_send.stored_bytes_encoder, STORED_BYTES_SEND)


def _answered_send() -> None:
    _wrap(pynetdicom.association.Association, "send_c_store", raw_send.answered_send,
          ANSWERED_SEND)


def _streamed_send(enabled: bool = True) -> None:
    if enabled:
        _wrap(pynetdicom.association, "encode", stream_send.streamed_encoder, STREAMED_SEND)
        _wrap(DIMSEServiceProvider, "send_msg", stream_send.streamed_sender, STREAMED_SEND)
    # Without them, large objects are read whole and sent by pynetdicom's own path.
    stream_send.enabled = enabled


def _retry_after_cap(enabled: bool = True) -> None:
    vaulthttp.retry_policy = vaulthttp.BoundedRetryPolicy if enabled else RetryPolicy


def _move_answer() -> None:
    _wrap(pynetdicom.service_class.QueryRetrieveServiceClass, "_move_scp",
          move_answer.answering_move_scp, MOVE_ANSWER)


def _get_answer() -> None:
    _wrap(pynetdicom.service_class.QueryRetrieveServiceClass, "_get_scp",
          get_answer.answering_get_scp, GET_ANSWER)


def _sub_association_cause(enabled: bool = True) -> None:
    move_attempt.noting = enabled


def _syntax_refusal() -> None:
    _wrap(pynetdicom.acse, "negotiate_unrestricted", syntax_refusal.refusing_negotiation,
          SYNTAX_REFUSAL)


def _echo_sop_class(enabled: bool = True) -> None:
    association = pynetdicom.association.Association
    if enabled:
        _wrap(association, "_serve_request", echo.answering_echo, ECHO_SOP_CLASS)
        return
    _unwrap(association, "_serve_request", ECHO_SOP_CLASS)


def _protocol_version_refusal(enabled: bool = True) -> None:
    if enabled:
        _wrap(pynetdicom.fsm, "AE_6", protocol_version.admitting, PROTOCOL_VERSION_REFUSAL)
    else:
        _unwrap(pynetdicom.fsm, "AE_6", PROTOCOL_VERSION_REFUSAL)
    description, _, next_state = pynetdicom.fsm.ACTIONS["AE-6"]
    pynetdicom.fsm.ACTIONS["AE-6"] = (description, pynetdicom.fsm.AE_6, next_state)


def _set_process_switches() -> None:
    """pynetdicom's process-wide switches; one archive per process, so set here once."""
    _config.LOG_HANDLER_LEVEL = "none"  # the standard handlers format every PDU
    _config.LOG_REQUEST_IDENTIFIERS = False  # they print patient data
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # any storage SOP class, private ones too


def _context_copy(enabled: bool = True) -> None:
    if enabled:
        _wrap(pynetdicom.transport, "deepcopy", contexts.copying, CONTEXT_COPY)
        return
    _unwrap(pynetdicom.transport, "deepcopy", CONTEXT_COPY)


def _context_lookup(enabled: bool = True) -> None:
    association = pynetdicom.association.Association
    if enabled:
        _wrap(association, "_get_valid_context", contexts.remembering_lookup, CONTEXT_LOOKUP)
        return
    _unwrap(association, "_get_valid_context", CONTEXT_LOOKUP)


def _negotiation_uids(enabled: bool = True) -> None:
    for module in _NEGOTIATION_MODULES:
        if enabled:
            _wrap(module, "set_uid", known_uids.known_uid_setter, NEGOTIATION_UIDS)
        else:
            _unwrap(module, "set_uid", NEGOTIATION_UIDS)
    context = pynetdicom.presentation.PresentationContext
    if enabled:
        _wrap(context, "add_transfer_syntax", known_uids.known_syntax_adder, NEGOTIATION_UIDS)
    else:
        _unwrap(context, "add_transfer_syntax", NEGOTIATION_UIDS)


def _association_items(enabled: bool = True) -> None:
    items = pynetdicom.pdu_items
    replacements: tuple[tuple[Any, str, Callable[[Any], Any]], ...] = (
        (items.AbstractSyntaxSubItem, "decode",
         association_items.syntax_name_decoder("abstract_syntax_name")),
        (items.AbstractSyntaxSubItem, "encode",
         association_items.syntax_name_encoder("abstract_syntax_name")),
        (items.TransferSyntaxSubItem, "decode",
         association_items.syntax_name_decoder("transfer_syntax_name")),
        (items.TransferSyntaxSubItem, "encode",
         association_items.syntax_name_encoder("transfer_syntax_name")),
        (items.PresentationContextItemRQ, "decode", association_items.proposed_context_decoder),
        (items.PresentationContextItemAC, "encode", association_items.accepted_context_encoder),
    )
    for owner, name, make in replacements:
        if enabled:
            _wrap(owner, name, make, ASSOCIATION_ITEMS)
        else:
            _unwrap(owner, name, ASSOCIATION_ITEMS)


def _proposal_memo(enabled: bool = True) -> None:
    request = pynetdicom.pdu.A_ASSOCIATE_RQ
    item = pynetdicom.pdu_items.PresentationContextItemRQ
    if enabled:
        _wrap(request, "_wrap_generate_items", proposals.remembering_items, PROPOSAL_MEMO)
        _wrap(item, "to_primitive", proposals.remembering_converter, PROPOSAL_MEMO)
        return
    _unwrap(request, "_wrap_generate_items", PROPOSAL_MEMO)
    _unwrap(item, "to_primitive", PROPOSAL_MEMO)


_APPLY: dict[str, Callable[[], None]] = {
    NEGOTIATION_UIDS: _negotiation_uids,
    ASSOCIATION_ITEMS: _association_items,
    PROPOSAL_MEMO: _proposal_memo,
    RECEIVED_COMMAND: _received_command,
    CONTEXT_COPY: _context_copy,
    CONTEXT_LOOKUP: _context_lookup,
    COMMAND_SET_ENCODER: _command_set_encoder,
    DIRECT_RESPONSES: _direct_responses,
    PDATA_BATCHES: _pdata_batches,
    ANSWER_ENCODER: _answer_encoder,
    STORED_BYTES_SEND: _stored_bytes_send,
    ANSWERED_SEND: _answered_send,
    STREAMED_SEND: _streamed_send,
    RETRY_AFTER_CAP: _retry_after_cap,
    PROCESS_SWITCHES: _set_process_switches,
    SYNTAX_REFUSAL: _syntax_refusal,
    PROTOCOL_VERSION_REFUSAL: _protocol_version_refusal,
    ECHO_SOP_CLASS: _echo_sop_class,
    MOVE_ANSWER: _move_answer,
    GET_ANSWER: _get_answer,
    SUB_ASSOCIATION_CAUSE: _sub_association_cause,
}
_FALLBACK: dict[str, Callable[[], None]] = {
    NEGOTIATION_UIDS: lambda: _negotiation_uids(enabled=False),
    ASSOCIATION_ITEMS: lambda: _association_items(enabled=False),
    PROPOSAL_MEMO: lambda: _proposal_memo(enabled=False),
    RECEIVED_COMMAND: lambda: _received_command(enabled=False),
    CONTEXT_COPY: lambda: _context_copy(enabled=False),
    CONTEXT_LOOKUP: lambda: _context_lookup(enabled=False),
    ANSWER_ENCODER: lambda: _answer_encoder(enabled=False),
    PDATA_BATCHES: lambda: _pdata_batches(enabled=False),
    PROTOCOL_VERSION_REFUSAL: lambda: _protocol_version_refusal(enabled=False),
    ECHO_SOP_CLASS: lambda: _echo_sop_class(enabled=False),
    STREAMED_SEND: lambda: _streamed_send(enabled=False),
    RETRY_AFTER_CAP: lambda: _retry_after_cap(enabled=False),
    SUB_ASSOCIATION_CAUSE: lambda: _sub_association_cause(enabled=False),
}
