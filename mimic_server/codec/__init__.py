"""Bytes <-> meaning without pydicom on the hot path.

Header reader, DICOM JSON, File Meta, command sets and C-FIND answers; each is held equal to
pydicom / pynetdicom on real files by its tests, and falls back to them for anything unusual.
"""
