#!/usr/bin/env bash
# placeholder, replaced by the foundation work
