"""Imaging data for medsyft: synthetic cohorts today, DICOM/NIfTI ingestion later.

Never imports syft: these modules must stay cheap to import and usable offline.
"""
