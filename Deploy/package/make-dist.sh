#!/bin/bash
# Packs a release build of conn-reaper into what an operator installs: a tarball, a .deb, SHA256SUMS.
#
#   Deploy/package/make-dist.sh VERSION BINARY OUTDIR      (`make dist` runs it)
#
# BINARY is a release build with the Swift standard library linked statically. Its man page and
# shell completions are made from the binary itself (swift-argument-parser generates both), the
# .deb's Depends from the shared libraries it links (dpkg-shlibdeps), so none is written by hand.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 VERSION BINARY OUTDIR" >&2
    exit 2
fi
version=$1 binary=$2 outdir=$3
repo=$(cd "$(dirname "$0")/../.." && pwd)
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "$0: version '$version' is not MAJOR.MINOR.PATCH" >&2; exit 2; }
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 2; }
[ -f "$outdir/conn-reaper.1" ] || { echo "$0: $outdir/conn-reaper.1 missing (make dist generates it first)" >&2; exit 2; }
arch=$(dpkg --print-architecture)
name=conn-reaper
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One tree, laid out as installed; the tarball carries it, the .deb is built from it.
stage() {
    local root=$1
    install -D -m 0755 "$binary" "$root/usr/bin/conn-reaper"
    strip --strip-unneeded "$root/usr/bin/conn-reaper"
    install -D -m 0644 "$repo/Deploy/systemd/conn-reaper.service" "$root/usr/lib/systemd/system/conn-reaper.service"
    install -D -m 0644 "$repo/Deploy/systemd/config.yaml" "$root/etc/conn-reaper/config.yaml"
    install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
        "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/man/man1" "$root/usr/share/doc/$name"
    # bash sources a completion, never runs it: no #! line (Debian's policy says so too).
    "$binary" --generate-completion-script bash | sed '1{/^#!/d}' > "$root/usr/share/bash-completion/completions/conn-reaper"
    "$binary" --generate-completion-script zsh > "$root/usr/share/zsh/vendor-completions/_conn-reaper"
    "$binary" --generate-completion-script fish > "$root/usr/share/fish/vendor_completions.d/conn-reaper.fish"
    gzip -9n < "$outdir/conn-reaper.1" > "$root/usr/share/man/man1/conn-reaper.1.gz"
    chmod 0644 "$root/usr/share/bash-completion/completions/conn-reaper" "$root/usr/share/zsh/vendor-completions/_conn-reaper" \
        "$root/usr/share/fish/vendor_completions.d/conn-reaper.fish" "$root/usr/share/man/man1/conn-reaper.1.gz"
}

# The tarball: the installed tree plus LICENSE and README at its top.
tree="$work/$name-$version-linux-$arch"
stage "$tree"
cp "$repo/LICENSE" "$repo/README.md" "$tree/"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
    -C "$work" -czf "$outdir/$name-$version-linux-$arch.tar.gz" "$(basename "$tree")"

# The .deb: the same tree, Debian's documentation files, and a control file.
root="$work/deb"
stage "$root"
doc="$root/usr/share/doc/$name"
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: conn-reaper
Source: https://github.com/conn-reaper/conn-reaper

Files: *
Copyright: 2026 The conn-reaper authors
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
changelog_date=$(date -u -R -d "@${SOURCE_DATE_EPOCH:-0}")
printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- conn-reaper maintainers <maintainers@conn-reaper.dev>  %s\n' \
    "$name" "$version" "$version" "$changelog_date" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/copyright" "$doc/changelog.gz"
# Yams, the YAML parser, compiles libyaml's C sources into the binary: SwiftPM cannot link Debian's
# libyaml in its place. lintian is told so here rather than silenced.
install -D -m 0644 /dev/stdin "$root/usr/share/lintian/overrides/$name" <<'OVERRIDES'
# Yams (https://github.com/jpsim/Yams) builds libyaml 0.2.5 into the binary; SwiftPM has no way to
# use the system libyaml instead, and libyaml fixes arrive with Yams releases.
conn-reaper: embedded-library libyaml [usr/bin/conn-reaper]
OVERRIDES

# Depends: what dpkg-shlibdeps finds for the binary's NEEDED libraries (it wants a debian/control).
mkdir -p "$work/shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" > "$work/shlibs/debian/control"
depends=$(cd "$work/shlibs" && dpkg-shlibdeps -O "$root/usr/bin/conn-reaper" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "$0: dpkg-shlibdeps found no dependencies for $binary" >&2; exit 1; }

mkdir -p "$root/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: conn-reaper maintainers <maintainers@conn-reaper.dev>
Installed-Size: $installed_size
Depends: $depends, init-system-helpers (>= 1.52)
Section: net
Priority: optional
Homepage: https://github.com/conn-reaper/conn-reaper
Description: end connections to dead backends at once
 conn-reaper watches backend health and, the moment a backend is dead, ends
 every socket toward it with sock_diag SOCK_DESTROY and deletes the matching
 conntrack entries, so an unmodified nginx, HAProxy or kubelet reconnects
 instead of waiting out its timeouts. A backend that is only draining or
 overloaded is left alone.
CONTROL
echo /etc/conn-reaper/config.yaml > "$root/DEBIAN/conffiles"
# Installed, not started: the sample configuration names documentation addresses until edited.
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
POSTINST
cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
POSTRM
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop conn-reaper.service >/dev/null || true
fi
PRERM
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles"
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm" "$root/DEBIAN/prerm"
dpkg-deb --root-owner-group -Zxz --build "$root" "$outdir/${name}_${version}_${arch}.deb" >/dev/null

(cd "$outdir" && sha256sum "$name-$version-linux-$arch.tar.gz" "${name}_${version}_${arch}.deb" > SHA256SUMS)
echo "$outdir: $(cd "$outdir" && echo ./*.tar.gz ./*.deb SHA256SUMS)"
