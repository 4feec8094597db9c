"""Local paths and object-store buckets (gs://, s3://) behind one small API: paths.py; Orbax on s3://: orbax_s3.py."""
