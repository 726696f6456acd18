#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Installs govpass as the Windows service "govpass" (WinDivert backend).

.DESCRIPTION
    Checks that the given Python (64-bit) has govpass, pydivert and pywin32,
    copies govpass_service.py (and optionally a config file) to
    %ProgramData%\govpass, restricts that folder to SYSTEM and Administrators,
    registers the service (automatic start, LocalSystem), sets restart-on-failure
    and starts it. NOT RUN: written on Linux without a Windows machine.

.PARAMETER Python
    python.exe to run the service with (default: the first python.exe on PATH).

.PARAMETER ConfigFile
    A govpass TOML file to install as %ProgramData%\govpass\govpass.toml.

.PARAMETER NoStart
    Register the service but do not start it.

.EXAMPLE
    py -3 -m pip install govpass pywin32
    .\install-service.ps1 -ConfigFile .\govpass.toml
#>
[CmdletBinding()]
param(
    [string]$Python = "",
    [string]$ConfigFile = "",
    [switch]$NoStart
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$ServiceName = "govpass"    # fixed by _svc_name_ in govpass_service.py
$DataDir = Join-Path $env:ProgramData "govpass"

function Resolve-Python {
    if ($Python) {
        return (Resolve-Path -LiteralPath $Python).Path
    }
    $cmd = Get-Command -Name "python.exe" -CommandType Application -ErrorAction SilentlyContinue |
        Select-Object -First 1
    if (-not $cmd) {
        throw "python.exe not found on PATH; pass -Python C:\Path\To\python.exe"
    }
    return $cmd.Source
}

$py = Resolve-Python
Write-Host "Python: $py"

# 64-bit Python (WinDivert64), and everything the service imports.
& $py -c "import struct, sys; sys.exit(0 if struct.calcsize('P') == 8 else 3)"
if ($LASTEXITCODE -ne 0) { throw "$py is not a 64-bit Python; WinDivert needs one" }
& $py -c "import govpass, pydivert, win32serviceutil, servicemanager"
if ($LASTEXITCODE -ne 0) {
    throw "missing packages; run: `"$py`" -m pip install govpass pywin32"
}
& $py -c "from govpass.backends.divert import unavailable_reason as r; import sys; m = r(); print(m or 'divert backend usable'); sys.exit(1 if m else 0)"
if ($LASTEXITCODE -ne 0) { throw "the divert backend cannot run here (see the line above)" }

if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
    throw "a service named '$ServiceName' exists already; run remove-service.ps1 first"
}

# Files: only SYSTEM and Administrators may change what a LocalSystem service runs.
New-Item -ItemType Directory -Force -Path $DataDir, (Join-Path $DataDir "run") | Out-Null
& icacls.exe $DataDir /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls could not restrict $DataDir" }
Copy-Item -LiteralPath (Join-Path $PSScriptRoot "govpass_service.py") -Destination $DataDir -Force
if ($ConfigFile) {
    Copy-Item -LiteralPath $ConfigFile -Destination (Join-Path $DataDir "govpass.toml") -Force
    & $py -c "import sys; from pathlib import Path; from govpass.config import load; load(Path(sys.argv[1]), flags={'backend': 'divert'})" (Join-Path $DataDir "govpass.toml")
    if ($LASTEXITCODE -ne 0) { throw "the config file is not valid (see the line above)" }
}

# pywin32's service host (pythonservice.exe) needs pywintypes/pythoncom DLLs where the
# SCM can load them; pip installs do not put them there without the post-install step.
# (try/catch: Windows PowerShell 5.1 turns a native command's stderr into an error here.)
$postInstalled = $false
try {
    & $py -m pywin32_postinstall -install -silent *> $null
    $postInstalled = ($LASTEXITCODE -eq 0)
} catch { $postInstalled = $false }
if (-not $postInstalled) {
    $post = Join-Path (Split-Path -Parent $py) "Scripts\pywin32_postinstall.py"
    if (Test-Path -LiteralPath $post) {
        try {
            & $py $post -install -silent *> $null
            $postInstalled = ($LASTEXITCODE -eq 0)
        } catch { $postInstalled = $false }
    }
}
if (-not $postInstalled) {
    Write-Warning ("pywin32's post-install step did not run; if the service fails to start " +
        "(error 1053), run pywin32_postinstall.py -install from the Python Scripts folder")
}

& $py (Join-Path $DataDir "govpass_service.py") --startup auto install
if ($LASTEXITCODE -ne 0) { throw "registering the service failed" }

# Restart after a crash or an error exit: 5 s, 5 s, then every 60 s; counters reset daily.
& sc.exe failure $ServiceName reset= 86400 actions= restart/5000/restart/5000/restart/60000 | Out-Null
& sc.exe failureflag $ServiceName 1 | Out-Null

if (-not $NoStart) {
    Start-Service -Name $ServiceName
    (Get-Service -Name $ServiceName).WaitForStatus("Running", [TimeSpan]::FromSeconds(20))
}
Get-Service -Name $ServiceName | Format-Table -AutoSize Name, Status, StartType
Write-Host "log:   $DataDir\govpass.log"
Write-Host "stats: `$env:GOVPASS_RUN_DIR = '$DataDir\run'; govpass stats"
