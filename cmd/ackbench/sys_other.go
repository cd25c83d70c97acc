//go:build !linux

package main

import "os/exec"

func setDeathSignal(*exec.Cmd) {}

// selfCPU is not measured outside Linux.
func selfCPU() float64 { return 0 }
