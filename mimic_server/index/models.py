"""The index schema: patient / study / series / instance, one row per DICOM entity.

Standard matching keys have typed columns so that C-FIND can use indexes; everything else of
the instance header is kept as DICOM JSON (PS3.18 F.2, bulk data left out) in
``instances.header``. Text is stored decoded (Unicode), whatever Specific Character Set the
object arrived in. DA and TM values are kept as their normalised DICOM strings, which sort
and compare correctly as text (``YYYYMMDD``, ``HHMMSS.FFFFFF``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)
PN = String(324)
JSON_DOCUMENT = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``issuer\\patient_id``, or ``study:<Study UID>`` when the object has no Patient ID, so
    #: that objects without one are never merged into one anonymous patient.
    patient_key: Mapped[str] = mapped_column(String(200), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str] = mapped_column(PN, index=True)
    patient_birth_date: Mapped[str] = mapped_column(String(8))
    patient_sex: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str] = mapped_column(String(8), index=True)
    study_time: Mapped[str] = mapped_column(String(16))
    accession_number: Mapped[str] = mapped_column(String(64), index=True)
    study_id: Mapped[str] = mapped_column(String(16))
    study_description: Mapped[str] = mapped_column(String(64))
    referring_physician_name: Mapped[str] = mapped_column(PN)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64))
    series_date: Mapped[str] = mapped_column(String(8))
    series_time: Mapped[str] = mapped_column(String(16))
    body_part_examined: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    specific_character_set: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(400), unique=True)
    header: Mapped[dict[str, Any]] = mapped_column(JSON_DOCUMENT)
    received_from: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One DICOM audit message (PS3.15 A.5) and the fields ``mimic audit`` filters on.

    Append-only: on PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE (migration 0003).
    ``studies`` holds the Study Instance UIDs separated and surrounded by spaces, so that
    one is found with ``LIKE '% uid %'``.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    event_code: Mapped[str] = mapped_column(String(16), index=True)
    event_type: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[int] = mapped_column(Integer)
    identity: Mapped[str | None] = mapped_column(String(400))
    trust_name: Mapped[str | None] = mapped_column(String(400))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    user_name: Mapped[str | None] = mapped_column(String(400))
    studies: Mapped[str] = mapped_column(Text)
    xml: Mapped[str] = mapped_column(Text)


class SignedOutSession(Base):
    """A console session signed out before its expiry (migration 0005): its id, and when its
    cookie expires anyway (Unix seconds, the cookie's ``exp``), after which the row serves
    nothing and the next sign-out deletes it. In the index because it is what every
    ``mimic web`` replica shares (with the session key): a sign-out must end the session on
    all of them (``web/console/sessions.py``)."""

    __tablename__ = "signed_out_sessions"

    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires: Mapped[int] = mapped_column(BigInteger, index=True)
