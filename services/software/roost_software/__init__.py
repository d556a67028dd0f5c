"""Roost software service: releases, deployment, update strategies."""
