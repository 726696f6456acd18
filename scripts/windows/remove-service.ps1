#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Stops and removes the Windows service "govpass".

.DESCRIPTION
    Stopping the service releases every packet govpass holds and closes its
    WinDivert handle; once the handle is closed nothing is diverted any more.
    The WinDivert driver itself stays loaded until reboot unless -StopDriver is
    given (it only unloads when no other program has a WinDivert handle open).
    NOT RUN: written on Linux without a Windows machine.

.PARAMETER Purge
    Also delete %ProgramData%\govpass (service wrapper, config, log, stats).

.PARAMETER StopDriver
    Also stop the WinDivert driver service ("sc.exe stop WinDivert").
#>
[CmdletBinding()]
param(
    [switch]$Purge,
    [switch]$StopDriver
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$ServiceName = "govpass"
$DataDir = Join-Path $env:ProgramData "govpass"

$svc = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($svc) {
    if ($svc.Status -ne "Stopped") {
        Stop-Service -Name $ServiceName -Force
        $svc.WaitForStatus("Stopped", [TimeSpan]::FromSeconds(30))
    }
    & sc.exe delete $ServiceName | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "sc.exe delete $ServiceName failed (exit $LASTEXITCODE)" }
    Write-Host "service '$ServiceName' removed"
} else {
    Write-Host "service '$ServiceName' is not installed"
}

if ($StopDriver) {
    # 1062: not started; 1051: other programs still use it. Neither is an error here.
    & sc.exe stop WinDivert | Out-Null
    Write-Host "WinDivert driver: stop requested (exit $LASTEXITCODE)"
}

if ($Purge -and (Test-Path -LiteralPath $DataDir)) {
    Remove-Item -LiteralPath $DataDir -Recurse -Force
    Write-Host "removed $DataDir"
}
