"""Files on disk: rmtprune's own format (safetensors + a structure record in its metadata), the
metadata it carries, the writer that streams it one tensor at a time, and the checked reader of
safetensors files, shards and Hugging Face directories."""
