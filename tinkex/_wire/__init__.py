"""Codecs shared by the client and the local server: JSON, the protobuf result decoder, the byte tokenizer."""
