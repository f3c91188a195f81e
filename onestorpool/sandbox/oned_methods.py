"""The XML-RPC methods each OpenNebula release registers (``addMethod`` calls in
``src/rm/RequestManager.cc`` at ``release-<version>.0``), as the base release's list and
what each later release added or removed. A method outside its release's list is
answered as xmlrpc-c answers it (-506 "Method '...' not defined"); a hook's CALL must be
one of them (``HookAPI::call_exist``)."""

from __future__ import annotations

from onestorpool.sandbox.oned_objects import Version

BASE = ("5.10", frozenset("""one.acl.addrule one.acl.delrule one.acl.info one.cluster.adddatastore
        one.cluster.addhost one.cluster.addvnet one.cluster.allocate
        one.cluster.deldatastore one.cluster.delete one.cluster.delhost one.cluster.delvnet
        one.cluster.info one.cluster.rename one.cluster.update one.clusterpool.info
        one.datastore.allocate one.datastore.chmod one.datastore.chown one.datastore.delete
        one.datastore.enable one.datastore.info one.datastore.rename one.datastore.update
        one.datastorepool.info one.document.allocate one.document.chmod one.document.chown
        one.document.clone one.document.delete one.document.info one.document.lock
        one.document.rename one.document.unlock one.document.update one.documentpool.info
        one.group.addadmin one.group.allocate one.group.deladmin one.group.delete
        one.group.info one.group.quota one.group.update one.grouppool.info
        one.groupquota.info one.groupquota.update one.hook.allocate one.hook.delete
        one.hook.info one.hook.lock one.hook.rename one.hook.retry one.hook.unlock
        one.hook.update one.hooklog.info one.hookpool.info one.host.allocate
        one.host.delete one.host.info one.host.monitoring one.host.rename one.host.status
        one.host.update one.hostpool.info one.hostpool.monitoring one.image.allocate
        one.image.chmod one.image.chown one.image.chtype one.image.clone one.image.delete
        one.image.enable one.image.info one.image.lock one.image.persistent
        one.image.rename one.image.snapshotdelete one.image.snapshotflatten
        one.image.snapshotrevert one.image.unlock one.image.update one.imagepool.info
        one.market.allocate one.market.allocatedb one.market.chmod one.market.chown
        one.market.delete one.market.info one.market.rename one.market.update
        one.market.updatedb one.marketapp.allocate one.marketapp.allocatedb
        one.marketapp.chmod one.marketapp.chown one.marketapp.delete one.marketapp.dropdb
        one.marketapp.enable one.marketapp.info one.marketapp.lock one.marketapp.rename
        one.marketapp.unlock one.marketapp.update one.marketapp.updatedb
        one.marketapppool.info one.marketpool.info one.secgroup.allocate one.secgroup.chmod
        one.secgroup.chown one.secgroup.clone one.secgroup.commit one.secgroup.delete
        one.secgroup.info one.secgroup.rename one.secgroup.update one.secgrouppool.info
        one.system.config one.system.sql one.system.sqlquery one.system.version
        one.template.allocate one.template.chmod one.template.chown one.template.clone
        one.template.delete one.template.info one.template.instantiate one.template.lock
        one.template.rename one.template.unlock one.template.update one.templatepool.info
        one.user.addgroup one.user.allocate one.user.chauth one.user.chgrp one.user.delete
        one.user.delgroup one.user.info one.user.login one.user.passwd one.user.quota
        one.user.update one.userpool.info one.userquota.info one.userquota.update
        one.vdc.addcluster one.vdc.adddatastore one.vdc.addgroup one.vdc.addhost
        one.vdc.addvnet one.vdc.allocate one.vdc.delcluster one.vdc.deldatastore
        one.vdc.delete one.vdc.delgroup one.vdc.delhost one.vdc.delvnet one.vdc.info
        one.vdc.rename one.vdc.update one.vdcpool.info one.vm.action one.vm.allocate
        one.vm.attach one.vm.attachnic one.vm.chmod one.vm.chown one.vm.deploy
        one.vm.detach one.vm.detachnic one.vm.diskresize one.vm.disksaveas
        one.vm.disksnapshotcreate one.vm.disksnapshotdelete one.vm.disksnapshotrename
        one.vm.disksnapshotrevert one.vm.info one.vm.lock one.vm.migrate one.vm.monitoring
        one.vm.recover one.vm.rename one.vm.resize one.vm.snapshotcreate
        one.vm.snapshotdelete one.vm.snapshotrevert one.vm.unlock one.vm.update
        one.vm.updateconf one.vmgroup.allocate one.vmgroup.chmod one.vmgroup.chown
        one.vmgroup.delete one.vmgroup.info one.vmgroup.lock one.vmgroup.rename
        one.vmgroup.unlock one.vmgroup.update one.vmgrouppool.info one.vmpool.accounting
        one.vmpool.calculateshowback one.vmpool.info one.vmpool.infoextended
        one.vmpool.monitoring one.vmpool.showback one.vn.add_ar one.vn.allocate
        one.vn.chmod one.vn.chown one.vn.delete one.vn.free_ar one.vn.hold one.vn.info
        one.vn.lock one.vn.release one.vn.rename one.vn.reserve one.vn.rm_ar one.vn.unlock
        one.vn.update one.vn.update_ar one.vnpool.info one.vntemplate.allocate
        one.vntemplate.chmod one.vntemplate.chown one.vntemplate.clone
        one.vntemplate.delete one.vntemplate.info one.vntemplate.instantiate
        one.vntemplate.lock one.vntemplate.rename one.vntemplate.unlock
        one.vntemplate.update one.vntemplatepool.info one.vrouter.allocate
        one.vrouter.attachnic one.vrouter.chmod one.vrouter.chown one.vrouter.delete
        one.vrouter.detachnic one.vrouter.info one.vrouter.instantiate one.vrouter.lock
        one.vrouter.rename one.vrouter.unlock one.vrouter.update one.vrouterpool.info
        one.zone.addserver one.zone.allocate one.zone.delete one.zone.delserver
        one.zone.fedreplicate one.zone.info one.zone.raftstatus one.zone.rename
        one.zone.replicate one.zone.resetserver one.zone.update one.zone.updatedb
        one.zone.voterequest one.zonepool.info""".split()))
# release: (added, removed) relative to the release before it
CHANGES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "5.12": (frozenset(),
           frozenset()),
    "6.0": (frozenset("""one.user.enable one.vmpool.infoset""".split()),
           frozenset()),
    "6.2": (frozenset("""one.market.enable one.vm.schedadd one.vm.scheddelete one.vm.schedupdate
        one.zone.enable""".split()),
           frozenset()),
    "6.4": (frozenset("""one.vm.attachsg one.vm.detachsg one.vn.recover""".split()),
           frozenset()),
    "6.6": (frozenset("""one.image.restore one.vm.backup one.vm.updatenic""".split()),
           frozenset()),
    "6.8": (frozenset("""one.backupjob.allocate one.backupjob.backup one.backupjob.cancel
        one.backupjob.chmod one.backupjob.chown one.backupjob.delete one.backupjob.info
        one.backupjob.lock one.backupjob.priority one.backupjob.rename one.backupjob.retry
        one.backupjob.schedadd one.backupjob.scheddelete one.backupjob.schedupdate
        one.backupjob.unlock one.backupjob.update one.backupjobpool.info
        one.vm.backupcancel one.vmgroup.roleadd one.vmgroup.roledelete
        one.vmgroup.roleupdate""".split()),
           frozenset()),
    "6.10": (frozenset("""one.vm.attachpci one.vm.detachpci one.vm.restore""".split()),
           frozenset()),
    "7.0": (frozenset("""one.cluster.optimize one.cluster.plandelete
        one.cluster.planexecute""".split()),
           frozenset()),
}


# The releases the sandbox emulates (bodies, methods, driver conventions): 5.10 ... 7.0
RELEASES = ("5.10", *CHANGES)


def release_methods(version: Version) -> frozenset[str]:
    """The methods of the newest release not newer than ``version``."""
    methods = set(BASE[1])
    for release, (added, removed) in CHANGES.items():
        if Version(release) > version:
            break
        methods = (methods | added) - removed
    return frozenset(methods)
