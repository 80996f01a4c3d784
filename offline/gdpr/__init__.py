"""GDPR and HIPAA duties, one library call each: subject export (Art. 15), erasure with a receipt
(Art. 17), the record of processing (Art. 30), retention, processing purposes and break-glass.

Modules are imported on use (``from offline.gdpr.erase import erase_subject``); nothing heavy here.
"""
