"""Helpers the tests and scripts/ share that are not part of the shipped package: a server launched
as a subprocess (launch), an image folder written from a dataset (folder_write), the fast decode
path's drift (drift)."""
