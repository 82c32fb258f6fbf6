"""The live demo: a web page streaming generated talking heads and their 3-D motion as they are made
(`stage2_dual/demo.py`)."""
